"""coiled_lab.api.APIClient against a real server: the same surface and exceptions as the
in-process control, events that survive a lost connection, and how get_control finds a
server (environment, runtime file) or falls back."""

from __future__ import annotations

import asyncio
import os
import stat
import subprocess
import sys
import time

import dask.config
import pytest

from coiled_lab.api import APIClient, APIError, read_runtime_file, write_runtime_file
from coiled_lab.connect import get_control
from coiled_lab.control.events import Event
from coiled_lab.control.limits import LimitExceeded
from coiled_lab.control.states import State
from coiled_lab.control.store import ClusterRecord
from coiled_lab.errors import Conflict, NotFound
from coiled_lab.spec import ClusterSpecError


def record(cluster_id: str, status: State = State.stopped, target: str = "stopped") -> ClusterRecord:
    now = time.time()
    return ClusterRecord(
        id=cluster_id, name=f"c-{cluster_id}", backend="local", spec={"n_workers": 1}, status=status,
        target=target, message=None, state={}, created_at=now, updated_at=now,
    )


@pytest.fixture
def client(service):
    c = APIClient(service.api_url, service.token, reconnect_for=10)
    yield c
    c.close()


async def test_same_surface_and_exceptions_as_in_process(service, client):
    manager = await service.manager()
    manager.store.insert_cluster(record("aaaaaaaaaaaa"))

    assert [c["id"] for c in await client.list()] == ["aaaaaaaaaaaa"]
    assert await client.list(live_only=True) == []
    assert (await client.get("c-aaaaaaaaaaaa"))["id"] == "aaaaaaaaaaaa"
    assert (await client.stop("aaaaaaaaaaaa"))["status"] == "stopped"
    assert (await client.wait("aaaaaaaaaaaa", ("running",), timeout=5))["status"] == "stopped"
    assert await client.logs("aaaaaaaaaaaa", since="10m", level="info", limit=None) == []
    assert (await client.estimate({"backend": "local", "n_workers": 3}))["per_hour"] == 0.0
    assert (await client.catalog("local"))["backend"] == "local"
    assert await client.cleanup(dry_run=True) == {"found": [], "errors": []}

    with pytest.raises(NotFound):
        await client.get("no-such-cluster")
    with pytest.raises(ClusterSpecError) as bad:
        await client.create({"n_workers": -1})
    assert bad.value.field == "n_workers"
    with pytest.raises(ClusterSpecError) as bad:
        await client.logs("aaaaaaaaaaaa", level="loud")
    assert bad.value.field == "level"
    with pytest.raises(ClusterSpecError) as bad:
        await client.catalog("azure")
    assert bad.value.field == "backend"
    with pytest.raises(Conflict):
        await client.scale("aaaaaaaaaaaa", 3)
    with pytest.raises(Conflict):
        await client.connection("aaaaaaaaaaaa")
    # An admin's limit is a 403 with a code of its own: the client raises the limit again,
    # not "token refused" (which is the APIError below).
    with dask.config.set({"coiled-lab.limits.max-workers": 2}):
        with pytest.raises(LimitExceeded) as over:
            await client.create({"n_workers": 3})
    assert (over.value.limit, over.value.field) == ("max-workers", "n_workers")
    assert "coiled-lab.limits.max-workers" in str(over.value)

    # The sync face, as the CLI uses it (from a thread that is not this test's loop).
    assert await asyncio.to_thread(client.run, client.get("aaaaaaaaaaaa")) == await client.get("aaaaaaaaaaaa")

    refused = APIClient(service.api_url, "not-the-token")
    try:
        with pytest.raises(APIError) as denied:
            await refused.list()
        assert denied.value.status == 403
    finally:
        refused.close()


async def test_unreachable_server_is_an_api_error(service):
    nowhere = APIClient("http://127.0.0.1:9/coiled-lab/api/", "t", reconnect_for=0.3)
    try:
        with pytest.raises(APIError) as lost:
            await nowhere.list()
        assert lost.value.status == 599
        with pytest.raises(APIError):
            await nowhere.wait("x", timeout=5)
    finally:
        nowhere.close()


def test_urls():
    c = APIClient("https://lab.example.org/user/me/coiled-lab/api", "t")
    try:
        assert c.server_url == "https://lab.example.org/user/me/"
        assert c.dashboard_url({"id": "abc", "dashboard": "http://10.0.0.5:8787"}) == (
            "/user/me/coiled-lab/clusters/abc/dashboard/status"
        )
        assert c.dashboard_url({"id": "abc", "dashboard": None}) is None
    finally:
        c.close()


async def test_wait_follows_state_events(service, client):
    manager = await service.manager()
    manager.store.insert_cluster(record("bbbbbbbbbbbb", State.stopping))
    waiting = asyncio.ensure_future(client.wait("bbbbbbbbbbbb", ("stopped",), timeout=30))
    await asyncio.sleep(0.5)
    assert not waiting.done()
    manager.request("bbbbbbbbbbbb")  # the reconciler finishes the stop: a state event
    assert (await waiting)["status"] == "stopped"


async def test_events_resume_after_a_lost_connection(service, client):
    manager = await service.manager()
    manager.store.insert_cluster(record("cccccccccccc"))

    def emit(n: int) -> None:
        data = {"step": f"step-{n}", "time": time.time()}
        seq = manager.store.add_event("cccccccccccc", "progress", data)
        manager.bus.publish(Event("cccccccccccc", "progress", data, data["time"], seq))

    stream = client.events("cccccccccccc")
    emit(0)  # before the socket exists: not part of a live stream
    first = asyncio.ensure_future(stream.__anext__())
    while not service.sockets:
        await asyncio.sleep(0.01)
    emit(1)
    assert (await first).data["step"] == "step-1"

    for socket in list(service.sockets):  # the server drops every event socket
        socket.close()
    while service.sockets:
        await asyncio.sleep(0.01)
    emit(2)  # published while nobody listens: replayed from the store on reconnect
    emit(3)
    got = [(await stream.__anext__()).data["step"] for _ in range(2)]
    assert got == ["step-2", "step-3"]
    emit(4)
    assert (await stream.__anext__()).data["step"] == "step-4"
    await stream.aclose()
    await asyncio.sleep(0.2)
    assert not service.sockets


async def test_get_control_finds_the_server(service, state_dir):
    control = get_control()  # this process runs the server: its environment names it
    assert isinstance(control, APIClient) and control.url == service.api_url

    try:
        info = read_runtime_file(state_dir)  # written once the manager started
        assert info == {"url": service.api_url, "token": service.token, "pid": os.getpid()}
        assert stat.S_IMODE((state_dir / "server.json").stat().st_mode) == 0o600
        published = {key: os.environ.pop(key) for key in ("COILED_LAB_API_URL", "COILED_LAB_API_TOKEN")}
        try:
            assert get_control() is control  # found through the runtime file instead
        finally:
            os.environ.update(published)

        await service.close()  # takes back the environment and the runtime file
        assert not (state_dir / "server.json").exists()
        assert "COILED_LAB_API_URL" not in os.environ and "COILED_LAB_API_TOKEN" not in os.environ
    finally:
        APIClient.reset_shared()


def test_runtime_file_of_a_dead_server_is_ignored(tmp_path):
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    write_runtime_file(tmp_path, "http://127.0.0.1:1/coiled-lab/api/", "t")
    assert read_runtime_file(tmp_path)["pid"] == os.getpid()
    (tmp_path / "server.json").write_text(f'{{"url": "u", "token": "t", "pid": {gone.pid}}}')
    assert read_runtime_file(tmp_path) is None
    (tmp_path / "server.json").write_text("not json")
    assert read_runtime_file(tmp_path) is None
