"""Two ``jupyter lab`` processes on one state dir: only one manages its clusters.

The second server is read-only and says so: it lists the first one's clusters and streams
their events, but refuses every change with a 503 that names the managing process, and
records nothing. When the first server is SIGKILLed, the second takes the store over by
itself: it adopts the running cluster (same processes), points the runtime file at itself,
and accepts changes.
"""

from __future__ import annotations

import asyncio
import json

import pytest
from tornado.httpclient import HTTPRequest
from tornado.websocket import websocket_connect

from coiled_lab.api import read_runtime_file
from coiled_lab.control.store import Store

from ..conftest import cluster_processes, wait_for
from ..ui.lab import JupyterLab

pytestmark = pytest.mark.slow


@pytest.fixture
def servers(tmp_path):
    first = JupyterLab(tmp_path / "first")
    second = JupyterLab(tmp_path / "second")
    second.state_dir = first.state_dir  # the point: one store, two servers
    first.start()
    second.start()
    yield first, second
    first.close()
    second.close()


async def _scale_and_watch(first: JupyterLab, second: JupyterLab, cluster_id: str, after: int) -> list[str]:
    """Scale through the first server; the state events the second one's socket carries.
    ``after``: replay from that sequence number, so nothing falls before the subscription."""
    request = HTTPRequest(f"ws://127.0.0.1:{second.port}/coiled-lab/api/events?cluster={cluster_id}&after={after}",
                          headers={"Authorization": f"token {second.token}"})
    socket = await websocket_connect(request)
    seen: list[str] = []
    try:
        code, answer = await asyncio.to_thread(first.api, "PATCH", f"coiled-lab/api/clusters/{cluster_id}",
                                               {"n_workers": 2})
        assert code == 200, answer
        while seen[-1:] != ["running"]:
            event = json.loads(await socket.read_message())
            if event["kind"] == "state":
                seen.append(event["data"]["status"])
    finally:
        socket.close()
    return seen


def test_a_second_server_is_read_only_until_the_first_dies(servers):
    first, second = servers
    store = Store(first.state_dir / "coiled-lab.sqlite")
    try:
        assert read_runtime_file(first.state_dir)["pid"] == first.proc.pid  # kernels find the first

        code, made = first.api("POST", "coiled-lab/api/clusters", {"backend": "local", "name": "shared", "n_workers": 1})
        assert code == 201, made
        wait_for(lambda: str(store.get_cluster(made["id"]).status) == "running", timeout=120, what="running")
        processes = {p.pid for p in cluster_processes(first.state_dir)}
        assert len(processes) == 2

        # The second one reads ...
        code, listed = second.api("GET", "coiled-lab/api/clusters")
        assert code == 200 and [(c["name"], c["status"]) for c in listed["clusters"]] == [("shared", "running")]
        # ... and refuses to change anything, saying who manages the store.
        events_before = len(store.events(limit=100_000))
        for method, path, body in [
            ("POST", "coiled-lab/api/clusters", {"backend": "local", "name": "other", "n_workers": 0}),
            ("PATCH", f"coiled-lab/api/clusters/{made['id']}", {"n_workers": 2}),
            ("DELETE", f"coiled-lab/api/clusters/{made['id']}", None),
        ]:
            code, answer = second.api(method, path, body)
            assert code == 503, (method, code, answer)
            assert f"another coiled-lab manager (pid {first.proc.pid})" in answer["error"], answer
        assert len(store.events(limit=100_000)) == events_before
        assert [r.name for r in store.list_clusters()] == ["shared"]

        # Its events socket carries what the first server does.
        watched = asyncio.run(asyncio.wait_for(
            _scale_and_watch(first, second, made["id"], store.last_event()), 120))
        assert watched == ["scaling", "running"]

        # The first dies: the second takes over, adopts the cluster, and accepts changes.
        first.kill()
        processes = {p.pid for p in cluster_processes(first.state_dir)}
        assert len(processes) == 3
        wait_for(lambda: (read_runtime_file(first.state_dir) or {}).get("pid") == second.proc.pid,
                 timeout=30, what="the second server to take over")
        code, answer = second.api("PATCH", f"coiled-lab/api/clusters/{made['id']}", {"n_workers": 1})
        assert code == 200, answer
        wait_for(lambda: str(store.get_cluster(made["id"]).status) == "running"
                 and len(cluster_processes(first.state_dir)) == 2, timeout=60, what="scaled down by the second")
        assert {p.pid for p in cluster_processes(first.state_dir)} < processes  # adopted, not relaunched
        code, answer = second.api("DELETE", f"coiled-lab/api/clusters/{made['id']}")
        assert code == 202 and answer["status"] == "stopping", answer
        wait_for(lambda: str(store.get_cluster(made["id"]).status) == "stopped", timeout=60, what="stopped")
        wait_for(lambda: not cluster_processes(first.state_dir), timeout=30, what="no dask process left")
    finally:
        store.close()
