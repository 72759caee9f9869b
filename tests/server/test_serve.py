"""``coiled-lab serve`` on its own (the whole team setup is in tests/hub/): what it answers
without a hub user, its health, its logs, and a store it cannot reach at start."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import time
from pathlib import Path

import dask.config
import pytest
import requests

from coiled_lab_server import serve

from ..hub.hub import free_port


@pytest.fixture
def restore_logging():
    """serve.main points every logger at JSON on stderr: put this process's back."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


def test_a_store_it_cannot_reach_at_start_is_retried_then_one_line_and_exit_3(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture, restore_logging) -> None:
    """No crash loop: tried again with growing waits for store.connect-timeout, then exit 3
    with one line naming the database (without its password) and the fix."""
    monkeypatch.setenv("DASK_COILED_LAB__STATE_DIR", str(tmp_path / "state"))
    started = time.monotonic()
    with dask.config.set({"coiled-lab.store.connect-timeout": "3 s"}):
        code = serve.main(["--db", "postgresql://coiled:hunter2@127.0.0.1:9/none"])
    took = time.monotonic() - started
    err = capsys.readouterr().err
    assert code == serve.EXIT_STORE == 3
    last = err.strip().splitlines()[-1]
    assert last.startswith("error: coiled-lab serve cannot start: cannot reach the store's database "
                           "postgresql://coiled@127.0.0.1:9/none"), last
    assert "check that PostgreSQL runs there" in last
    assert "hunter2" not in err
    retries = [json.loads(line) for line in err.splitlines() if line.startswith("{")]
    assert len(retries) >= 2 and all(r["level"] == "warning" for r in retries)  # JSON lines, one per retry
    assert 3 <= took < 30


def test_an_unreadable_config_file_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture,
                                                restore_logging) -> None:
    assert serve.main(["--config", str(tmp_path / "missing.yaml")]) == 2
    assert capsys.readouterr().err.startswith(f"error: --config {tmp_path / 'missing.yaml'}: ")


@pytest.mark.slow
def test_the_service_answers_hub_users_only_and_serves_nothing_else(tmp_path: Path) -> None:
    port = free_port()
    env = {**os.environ, "DASK_COILED_LAB__STATE_DIR": str(tmp_path / "state"), "JUPYTERHUB_API_TOKEN": "x",
           "JUPYTERHUB_API_URL": "http://127.0.0.1:9/hub/api", "JUPYTERHUB_SERVICE_NAME": "coiled-lab",
           "AWS_SECRET_ACCESS_KEY": "not-for-anyone"}
    log = open(tmp_path / "serve.log", "wb")
    proc = subprocess.Popen([sys.executable, "-c", "import sys; from coiled_lab.cli import main; sys.exit(main())",
                             "serve", "--allow-root", "--port", str(port)], env=env, stdout=log, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}/services/coiled-lab"
    try:
        deadline = time.monotonic() + 90
        while True:
            try:
                health = requests.get(f"{base}/health", timeout=5)
                break
            except requests.ConnectionError:
                assert time.monotonic() < deadline and proc.poll() is None, (tmp_path / "serve.log").read_text()
                time.sleep(0.3)
        assert health.status_code == 200
        assert health.json() == {"version": __import__("coiled_lab").__version__, "role": "leader", "store": "ok"}
        assert requests.get(f"{base}/", timeout=5, allow_redirects=False).headers["Location"].startswith(
            "/services/coiled-lab/health")
        # coiled-lab's routes want a hub user; with the hub down, a token cannot name one (503).
        for path in ("coiled-lab/api/clusters", "coiled-lab/api/audit", "coiled-lab/api/credentials", "metrics"):
            assert requests.get(f"{base}/{path}", timeout=10).status_code == 403, path
            reply = requests.get(f"{base}/{path}", headers={"Authorization": "token not-a-hub-token"}, timeout=10)
            assert reply.status_code == 503, (path, reply.text)
        reply = requests.get(f"{base}/coiled-lab/api/clusters", headers={"Authorization": "token x"}, timeout=10)
        assert "JupyterHub could not say who asks" in reply.json()["error"]
        # Nothing of the service account's server but coiled-lab.
        for path in ("api/kernels", "api/contents", "api/sessions", "api/terminals", "terminals/websocket/1",
                     "files/credentials.json", "api/me", "api/status", "lab", "tree", "view/x"):
            assert requests.get(f"{base}/{path}", timeout=10).status_code == 404, path
    finally:
        proc.terminate()
        proc.wait(30)
        log.close()
    lines = (tmp_path / "serve.log").read_text().splitlines()
    entries = [json.loads(line) for line in lines if line.strip()]  # every line is one JSON object
    assert {"time", "level", "logger", "event"} <= set(entries[0])
    requests_seen = [e for e in entries if e["logger"] == "coiled_lab.serve.access"]
    assert any(e["path"].endswith("/coiled-lab/api/clusters") and e["status"] == 403 for e in requests_seen)
    assert "not-for-anyone" not in "\n".join(lines)
