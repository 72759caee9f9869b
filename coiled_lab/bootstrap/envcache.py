"""On a cluster VM: the environment archive in the user's bucket, fetched or built.

An environment (:mod:`coiled_lab.environment`) is built once per hash: the first
scheduler to boot with it installs it (:mod:`.packages`) and uploads ``envs/<hash>.tar.gz``
(the virtual environment and the user's code, paths relative to the boot directory);
every later VM, and the workers of that first cluster, which wait for it, unpack it
instead of installing. What an install needs that the index does not have (the pins, the
user's wheels and code) is ``inputs/<hash>.tar``, put there by the server before launch.

Both are read and written with the machine's own identity: the instance role's
credentials (S3, SigV4) or the service account's token (GCS). A missing or damaged
archive is never fatal: the VM installs instead, and a scheduler uploads it again.
Standard library only.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tarfile
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any, Callable, Iterator, Optional

GCS_ENDPOINT = "https://storage.googleapis.com"


class Bucket:
    """GET and PUT of whole objects; :meth:`get` returns None for a missing one."""

    def __init__(self, request: Callable[[str, str, Any, dict], urllib.request.Request], missing: tuple[int, ...],
                 timeout: float = 120.0):
        self._request, self.missing, self.timeout = request, missing, timeout
        self._opener = urllib.request.build_opener()  # the proxy variables as they are now

    def get(self, key: str):
        try:
            return self._opener.open(self._request("GET", key, None, {}), timeout=self.timeout)
        except urllib.error.HTTPError as exc:
            if exc.code in self.missing:
                return None
            raise

    def put(self, key: str, path: Path) -> None:
        with open(path, "rb") as body:
            headers = {"Content-Length": str(path.stat().st_size), "Content-Type": "application/gzip"}
            with self._opener.open(self._request("PUT", key, body, headers), timeout=self.timeout * 10):
                pass


def s3(bucket: str, region: str, credentials: Callable[[], Any], endpoint: Optional[str] = None) -> Bucket:
    """An S3 bucket, path-style, requests signed with ``credentials`` (SigV4, unsigned payload)."""
    from .logship import sigv4_headers

    base = (endpoint or os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
            or f"https://s3.{region}.amazonaws.com").rstrip("/")

    def request(method: str, key: str, body: Any, headers: dict) -> urllib.request.Request:
        url = f"{base}/{bucket}/{urllib.parse.quote(key)}"
        signed = sigv4_headers(url, {**headers, "x-amz-content-sha256": "UNSIGNED-PAYLOAD"}, b"", credentials(),
                               region, "s3", method=method, payload="UNSIGNED-PAYLOAD")
        return urllib.request.Request(url, body, signed, method=method)

    return Bucket(request, (403, 404))  # S3 answers 403 for a missing key to those who may not list


def gcs(bucket: str, token: Callable[[], str], endpoint: Optional[str] = None) -> Bucket:
    """A GCS bucket through the JSON API, with the service account's ``token``."""
    host = endpoint or os.environ.get("STORAGE_EMULATOR_HOST") or GCS_ENDPOINT
    base = host if "://" in host else f"http://{host}"

    def request(method: str, key: str, body: Any, headers: dict) -> urllib.request.Request:
        name = urllib.parse.quote(key, safe="")
        url = (f"{base}/storage/v1/b/{bucket}/o/{name}?alt=media" if method == "GET" else
               f"{base}/upload/storage/v1/b/{bucket}/o?uploadType=media&name={name}")
        return urllib.request.Request(url, body, {**headers, "Authorization": f"Bearer {token()}"},
                                      method="GET" if method == "GET" else "POST")

    return Bucket(request, (404,))  # (403 on GCS is a permission missing: said, not taken for "absent")


def open_bucket(store: dict[str, Any], credentials: Callable[[], Any]) -> Bucket:
    """The bucket config.json's ``env.store`` names; ``credentials`` is the instance
    role's (S3) or the service account's token function (GCS)."""
    if store["kind"] == "gcs":
        return gcs(store["bucket"], credentials)
    return s3(store["bucket"], store["region"], credentials)


def fetch_inputs(bucket: Bucket, key: str, dest: Path) -> dict[str, Any]:
    """Unpack ``inputs/<hash>.tar`` into ``dest``: ``pins.txt``, ``wheels/``, ``code/``."""
    response = bucket.get(key)
    if response is None:
        raise FileNotFoundError(f"the environment's inputs {key} are not in the bucket")
    dest.mkdir(parents=True, exist_ok=True)
    with response, tarfile.open(fileobj=response, mode="r|") as tar:
        tar.extractall(dest, members=_checked(tar))
    code = dest / "files.tar.gz"
    if code.exists():
        with tarfile.open(code) as tar:
            tar.extractall(dest / "code", members=_checked(tar))
    return json.loads((dest / "meta.json").read_text()) if (dest / "meta.json").exists() else {}


def unpack(bucket: Bucket, key: str, workdir: Path) -> bool:
    """``venv/`` and ``code/`` of the archive into ``workdir``, streamed into the image's
    GNU tar (download, decompression and writing overlap; tens of thousands of files are
    several times faster to write than with Python's tarfile); False when there is no
    archive. A damaged one raises. tar strips leading ``/``, skips names with ``..``, makes
    links that point outside only once everything else is written, and here neither owners
    nor modes beyond the user's are kept."""
    response = bucket.get(key)
    if response is None:
        return False
    command = ["tar", "-xzf", "-", "-C", str(workdir), "--no-same-owner", "--no-same-permissions"]
    with response, subprocess.Popen(command, stdin=subprocess.PIPE, stderr=subprocess.PIPE) as tar:
        try:
            shutil.copyfileobj(response, tar.stdin, 1 << 20)  # type: ignore[arg-type]
            tar.stdin.close()  # type: ignore[union-attr]
        except BrokenPipeError:
            pass
        error = tar.stderr.read().decode(errors="replace").strip()  # type: ignore[union-attr]
        if tar.wait():
            raise OSError(f"tar could not unpack {key}: {error[-300:] or f'status {tar.returncode}'}")
    meta = json.loads((workdir / "venv" / "coiled-lab-env.json").read_text())
    _relocate(workdir, Path(meta["built_in"]))
    return True


def _checked(tar: tarfile.TarFile) -> Iterator[tarfile.TarInfo]:
    """The inputs archive's members, each checked before it is written (the images'
    Pythons, 3.9 and 3.11.2, predate tarfile's extraction filters): regular files,
    directories and links only, every name and link inside the directory, owners and
    special bits dropped."""
    for member in tar:
        name = member.name
        if name.startswith("/") or ".." in Path(name).parts or not (member.isfile() or member.isdir() or member.issym()):
            raise tarfile.TarError(f"{name}: not allowed in an environment archive")
        if member.issym():
            target = member.linkname
            inside = os.path.normpath(os.path.join(os.path.dirname(name), target))
            if os.path.isabs(target) or inside == ".." or inside.startswith("../"):
                raise tarfile.TarError(f"{name} links to {target}: not allowed in an environment archive")
        member.mode &= 0o755
        member.uid = member.gid = 0
        member.uname = member.gname = ""
        yield member


def _relocate(workdir: Path, built_in: Path) -> None:
    """Links and ``pyvenv.cfg`` that name the directory the archive was built in, moved here."""
    old = str(built_in)
    if old == str(workdir):
        return
    for root in ("venv", "python"):
        for path in (workdir / root).rglob("*") if (workdir / root).exists() else ():
            if path.is_symlink() and os.readlink(path).startswith(old + "/"):
                target = str(workdir) + os.readlink(path)[len(old):]
                path.unlink()
                path.symlink_to(target)
    cfg = workdir / "venv" / "pyvenv.cfg"
    cfg.write_text(cfg.read_text().replace(old, str(workdir)))


def pack(workdir: Path, env_hash: str) -> Path:
    """``envs/<hash>.tar.gz`` of ``venv/``, ``code/`` and uv's ``python/`` (if it made one)
    under ``workdir``, written to a temporary file by GNU tar and gzip -1. It runs while dask starts: the bytecode dask's imports write goes in too (so
    later VMs import at once), and a file that vanishes meanwhile (a bytecode write's
    temporary) is left out (tar's status 1: "file changed as we read it")."""
    (workdir / "venv" / "coiled-lab-env.json").write_text(json.dumps({"hash": env_hash, "built_in": str(workdir)}))
    parts = [p for p in ("venv", "code", "python") if (workdir / p).exists()]
    fd, name = tempfile.mkstemp(prefix="coiled-lab-env-", suffix=".tar.gz", dir=workdir)
    with os.fdopen(fd, "wb") as out:
        tar = subprocess.Popen(["tar", "-cf", "-", "-C", str(workdir), "--ignore-failed-read", *parts],
                               stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
        gzip = subprocess.run(["gzip", "-1"], stdin=tar.stdout, stdout=out)
        tar.stdout.close()  # type: ignore[union-attr]
        if tar.wait() not in (0, 1) or gzip.returncode:
            raise OSError(f"tar or gzip failed packing the environment (status {tar.returncode}, {gzip.returncode})")
    return Path(name)


def wait_for(bucket: Bucket, key: str, workdir: Path, seconds: float, say: Callable[..., None]) -> bool:
    """Poll for the archive another VM is building; unpack it when it comes."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            if unpack(bucket, key, workdir):
                return True
        except (OSError, tarfile.TarError, ValueError, KeyError) as exc:
            say(f"environment archive {key} could not be used ({type(exc).__name__}: {exc}); installing instead",
                "WARNING")
            return False
        time.sleep(3)
    return False


def discard(workdir: Path) -> None:
    """What a damaged archive left half-unpacked."""
    for part in ("venv", "code", "python"):
        shutil.rmtree(workdir / part, ignore_errors=True)

