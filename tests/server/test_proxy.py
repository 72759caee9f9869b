"""The dashboard proxy reaches the dashboard its cluster's record names, passes path and
query through, and keeps Jupyter's credentials (token, cookies) on the Jupyter server:
in a cloud the dashboard runs on the cluster's own machines."""

from __future__ import annotations

import http.server
import json
import threading
import time

import dask.config
import pytest

from coiled_lab.control.states import State
from coiled_lab.control.store import ClusterRecord


class Echo(http.server.BaseHTTPRequestHandler):
    """A stand-in dashboard that answers with the request it received."""

    def do_GET(self) -> None:
        body = json.dumps({"path": self.path, "headers": dict(self.headers)}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args) -> None:
        pass


@pytest.fixture
def jp_server_config(jp_server_config):
    """No reconcile pass touches the hand-made record below during the test."""
    with dask.config.set({"coiled-lab.manager.check-interval": 3600}):
        yield jp_server_config


@pytest.fixture
def dashboard():
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Echo)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


async def test_proxy_forwards_without_jupyter_credentials(service, api, dashboard):
    manager = await service.manager()
    now = time.time()
    manager.store.insert_cluster(ClusterRecord(
        id="feedfacecafe", name="echo", backend="local", spec={"n_workers": 1}, status=State.running,
        target="running", message=None, state={"dashboard": dashboard}, created_at=now, updated_at=now,
    ))
    headers = {"Cookie": "username-127-0-0-1=secret-session", "X-Test": "kept"}
    code, seen = await api("GET", "coiled-lab/clusters", "echo", "dashboard", "individual-plots.json",
                           params={"a": "1"}, headers=headers)
    assert code == 200, seen
    assert seen["path"] == "/individual-plots.json?a=1"
    assert seen["headers"]["X-Test"] == "kept"
    assert not {"Authorization", "Cookie", "X-XSRFToken"} & set(seen["headers"])

    code, seen = await api("GET", "coiled-lab/clusters", "echo", "dashboard", "status",
                           headers={"Authorization": f"coiled-lab {service.token}"})
    assert code == 200 and "Authorization" not in seen["headers"]
