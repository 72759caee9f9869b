"""A real ``jupyter lab`` with the extension, SIGKILLed while its clusters provision, run
and stop, then started again on the same state dir (local backend: real dask processes).

After each restart: a running cluster is adopted (same processes, none added), a
provisioning one finishes (one scheduler and its workers, no duplicate), a stopping one
ends ``stopped`` with nothing left; a kernel-side ``APIClient`` and a ``Cluster`` attached
by name keep working (the old kernel token is replaced from the server's runtime file) and
the events WebSocket resumes on its own; a dask Client computes straight through.
"""

from __future__ import annotations

import threading
from typing import Any

import dask.config
import pytest

from coiled_lab.api import APIClient, read_runtime_file
from coiled_lab.control.store import Store

from ..conftest import cluster_processes, wait_for
from ..ui.lab import JupyterLab

pytestmark = pytest.mark.slow


@pytest.fixture
def lab(tmp_path):
    server = JupyterLab(tmp_path / "lab")
    server.start()
    # This test process plays a kernel's part: it finds the server by the state dir.
    with dask.config.set({"coiled-lab.state-dir": str(server.state_dir)}):
        yield server
    server.close()


def processes(lab: JupyterLab, cluster_id: str) -> dict[int, str]:
    """pid -> role of the cluster's live dask processes, found by command line."""
    found = {}
    for proc in cluster_processes(lab.state_dir):
        cmdline = " ".join(proc.cmdline())
        if cluster_id in cmdline:
            found[proc.pid] = "scheduler" if "distributed.cli.dask_scheduler" in cmdline else "worker"
    return found


def status(store: Store, cluster_id: str) -> str:
    return str(store.get_cluster(cluster_id).status)


def restart(lab: JupyterLab) -> None:
    lab.kill()
    lab.start()


class Listener:
    """A kernel-side events consumer (``APIClient.events``) in a thread of its own."""

    def __init__(self, client: APIClient):
        self.events: list[Any] = []
        self._client = client
        threading.Thread(target=client.run, args=(self._listen(),), daemon=True).start()

    async def _listen(self) -> None:
        async for event in self._client.events():
            self.events.append(event)

    def states(self, cluster_id: str) -> list[str]:
        return [e.data["status"] for e in self.events if e.kind == "state" and e.cluster_id == cluster_id]


def test_server_killed_while_running_provisioning_and_stopping(lab):
    from distributed import Client

    from coiled_lab import Cluster

    info = read_runtime_file(lab.state_dir)
    kernel = APIClient(info["url"], info["token"], reconnect_for=120)
    store = Store(lab.state_dir / "coiled-lab.sqlite")
    try:
        # -- killed while a cluster runs: adopted, same processes ---------------------------
        # Listening from before the start: it has seen stored events, so after the restart
        # it resumes after the last one (none missed while the server was away).
        listener = Listener(kernel)
        a = kernel.run(kernel.create({"backend": "local", "name": "adopt-me", "n_workers": 2}))
        assert kernel.run(kernel.wait(a["id"], timeout=120))["status"] == "running"
        before = processes(lab, a["id"])
        assert sorted(before.values()) == ["scheduler", "worker", "worker"]
        cluster = Cluster(name="adopt-me", shutdown_on_close=False, control=kernel)
        dask_client = Client(cluster)
        assert dask_client.submit(sum, [1, 2]).result(timeout=60) == 3
        wait_for(lambda: "running" in listener.states(a["id"]), timeout=30, what="the start's events")

        restart(lab)
        assert kernel.run(kernel.wait(a["id"], timeout=60))["status"] == "running"
        assert processes(lab, a["id"]) == before  # adopted: no process added, none lost
        assert dask_client.submit(sum, [3, 4]).result(timeout=60) == 7  # dask never noticed
        # The kernel's client is refused its old token, takes the new one from the runtime
        # file, and the events socket reconnects and resumes on its own.
        cluster.scale(1)
        wait_for(lambda: listener.states(a["id"])[-2:] == ["scaling", "running"],
                 timeout=60, what="scaling then running over the reconnected events socket")
        wait_for(lambda: len(processes(lab, a["id"])) == 2, timeout=60, what="one worker retired")
        dask_client.close()
        cluster.close()

        # -- killed while a cluster provisions: it finishes, nothing launched twice --------
        b = kernel.run(kernel.create({"backend": "local", "name": "half-made", "n_workers": 2}))
        wait_for(lambda: store.instances(b["id"]) and status(store, b["id"]) == "provisioning",
                 timeout=60, interval=0.02, what="the scheduler launched, the cluster still provisioning")
        lab.kill()
        assert status(store, b["id"]) == "provisioning"
        lab.start()
        assert kernel.run(kernel.wait(b["id"], timeout=120))["status"] == "running"
        assert sorted(processes(lab, b["id"]).values()) == ["scheduler", "worker", "worker"]
        assert len({i.id for i in store.instances(b["id"])}) == 3

        # -- killed while a cluster stops: it ends stopped, nothing left -------------------
        answer = kernel.run(kernel.stop(a["id"]))
        lab.kill()
        assert answer["status"] == "stopping" and status(store, a["id"]) == "stopping"
        lab.start()
        final = kernel.run(kernel.wait(a["id"], ("stopped",), timeout=120))
        assert (final["status"], final["message"]) == ("stopped", "stopped on request")
        wait_for(lambda: not processes(lab, a["id"]), timeout=30, what="the stopped cluster's processes gone")
        assert processes(lab, b["id"])  # the other one untouched

        kernel.run(kernel.stop(b["id"]))
        assert kernel.run(kernel.wait(b["id"], ("stopped",), timeout=120))["status"] == "stopped"
        wait_for(lambda: not cluster_processes(lab.state_dir), timeout=30, what="no dask process left")
    finally:
        store.close()
        kernel.close()
