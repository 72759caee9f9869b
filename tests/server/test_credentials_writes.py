"""100 PUT /credentials at once against a real Jupyter server: none fails, the stored file
is valid JSON whenever it is read, and the credentials are never seen as missing."""

from __future__ import annotations

import asyncio
import json
import threading

FORMS = [{"provider": "aws", "access_key_id": f"AKIARACE{n:012d}", "secret_access_key": f"secret-{n}"}
         for n in range(100)]


async def test_concurrent_puts_never_fail_and_the_file_is_always_whole(service, api, state_dir):
    path = state_dir / "credentials.json"
    code, _ = await api("PUT", "coiled-lab/api/credentials", body=FORMS[0])
    assert code == 200
    damaged: list[str] = []
    reads = [0]
    done = threading.Event()

    def read_all_the_time() -> None:  # as the server itself does on every status or cloud call
        while not done.is_set():
            text = path.read_text()
            reads[0] += 1
            try:
                json.loads(text)
            except ValueError:
                damaged.append(text)

    reader = threading.Thread(target=read_all_the_time)
    reader.start()
    try:
        puts = [api("PUT", "coiled-lab/api/credentials", body=form) for form in FORMS]
        gets = [api("GET", "coiled-lab/api/credentials") for _ in FORMS]
        answers = await asyncio.gather(*puts, *gets)
    finally:
        done.set()
        reader.join()
    codes = sorted({code for code, _ in answers})
    assert codes == [200], [reply for code, reply in answers if code != 200][:3]
    assert all(reply["aws"]["configured"] and reply["aws"]["source"] == "stored" for _, reply in answers)
    assert damaged == [] and reads[0] > 0
    stored = json.loads(path.read_text())["aws"]
    assert {"provider": "aws", **{k: stored[k] for k in ("access_key_id", "secret_access_key")}} in FORMS
    assert [p.name for p in state_dir.iterdir() if p.name.endswith(".tmp")] == []  # no temporary file left
