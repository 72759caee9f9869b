"""Reading user-data as EC2 holds it: a gzip-compressed script with the bootstrap archive appended."""

from __future__ import annotations

import base64
import gzip
import io
import json
import tarfile


def unpack(data: bytes) -> tuple[str, dict[str, bytes], dict[str, int]]:
    """The script, and the files (and modes) of the archive appended to it."""
    raw = gzip.decompress(data)
    offset = int(raw.split(b"tail -c +", 1)[1].split(b" ", 1)[0])
    with tarfile.open(fileobj=io.BytesIO(raw[offset - 1:])) as tar:
        members = tar.getmembers()
        files = {m.name: tar.extractfile(m).read() for m in members}
        modes = {m.name: m.mode for m in members}
    return raw[: offset - 1].decode(), files, modes


def user_data_text(encoded: str) -> str:
    """Base64 user-data (as the API returns it) as text: the script and every file it carries."""
    script, files, _ = unpack(base64.b64decode(encoded))
    return script + "".join(f"\n--- {name}\n{data.decode()}" for name, data in sorted(files.items()))


def user_data_config(encoded: str) -> dict:
    """The config.json inside base64 user-data."""
    return json.loads(unpack(base64.b64decode(encoded))[1]["config.json"])
