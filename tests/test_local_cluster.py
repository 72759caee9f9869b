"""The local backend end to end: real scheduler and worker processes, TLS, the manager's
reconcile loop, adoption after a crash, faults, and timeouts enforced by the cluster."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import dask.config
import psutil
import pytest
from distributed import Client

from coiled_lab import Cluster
from coiled_lab.backends.local import LocalBackend
from coiled_lab.control.inprocess import InProcessControl
from coiled_lab.control.manager import ClusterManager
from coiled_lab.control.store import Store
from coiled_lab.spec import ClusterSpecError
from coiled_lab.tls import TLSMaterial

from .conftest import cluster_processes, wait_for

pytestmark = pytest.mark.slow


def roles(state_dir) -> list[str]:
    return roles_of(cluster_processes(state_dir))


def roles_of(procs: list[psutil.Process]) -> list[str]:
    return sorted("scheduler" if any("dask_scheduler" in a for a in p.cmdline()) else "worker" for p in procs)


def states(control, cluster_id) -> list[str]:
    return [e["data"]["status"] for e in control.manager.store.events(cluster_id) if e["kind"] == "state"]


def zygotes() -> list[psutil.Process]:
    """The warm Pythons this test process's local backend forks dask processes from."""
    return [p for p in psutil.Process().children() if "serve_forks" in " ".join(p.cmdline())]


def forked(state_dir) -> list[str]:
    """Roles of the cluster processes that were forked from a zygote of this process."""
    parents = {z.pid for z in zygotes()}
    return roles_of([p for p in cluster_processes(state_dir) if p.ppid() in parents])


def test_cluster_lifecycle_over_tls(control, state_dir):
    with Cluster(n_workers=2, control=control) as cluster:
        assert cluster.scheduler_address.startswith("tls://127.0.0.1:")
        assert roles(state_dir) == ["scheduler", "worker", "worker"]
        with Client(cluster) as client:
            assert client.submit(lambda x: x * 2, 21).result() == 42
            assert sum(client.gather(client.map(lambda x: x + 1, range(10)))) == 55

            cluster.scale(3)
            client.wait_for_workers(3, timeout=60)
            wait_for(lambda: roles(state_dir).count("worker") == 3, what="3 worker processes")
            assert control.run(control.wait(cluster.cluster_id, ("running",), 30))["workers"]["ready"] == 3

            cluster.scale(1)
            wait_for(lambda: len(client.scheduler_info()["workers"]) == 1, what="scale down to 1")
            wait_for(lambda: roles(state_dir).count("worker") == 1, what="1 worker process")
            assert control.run(control.wait(cluster.cluster_id, ("running",), 30))["workers"]["ready"] == 1
            assert client.submit(lambda: 1).result() == 1

        # A certificate made for another cluster does not open this one.
        stranger = TLSMaterial.generate("another-cluster").security()
        with pytest.raises((OSError, TimeoutError)):
            Client(cluster.scheduler_address, security=stranger, timeout=3)
        assert "Scheduler" in cluster.get_logs()
        cluster_id = cluster.cluster_id
    assert cluster.record["status"] == "stopped"
    wait_for(lambda: not cluster_processes(state_dir), timeout=15, what="no process left")
    assert states(control, cluster_id) == [
        "pending", "provisioning", "running", "scaling", "running", "scaling", "running", "stopping", "stopped",
    ]
    # The private key does not outlive the cluster.
    assert not (state_dir / "clusters" / cluster_id / "tls-key.pem").exists()


def test_a_resize_during_a_pass_is_judged_by_the_next_one(control, state_dir, monkeypatch):
    """A pass works toward the size it read when it began. A scale that lands while it runs
    (here: to 1, once the 3 workers it waits for are ready) must not let it declare the
    cluster running at the old size: the cluster goes straight on to the new one."""
    manager = control.manager
    made = control.run(manager.create({"backend": "local", "n_workers": 2}))
    control.run(manager.wait(made["id"], ("running",), 60))
    original = manager._retire_extras
    resized = []

    async def retire_and_resize(rec, ctx, workers, connected):
        if ctx.spec.n_workers == 3 and len(connected) == 3 and not resized:
            resized.append(await manager.scale(made["id"], 1))
        return await original(rec, ctx, workers, connected)

    monkeypatch.setattr(manager, "_retire_extras", retire_and_resize)
    control.run(manager.scale(made["id"], 3))
    wait_for(lambda: resized, timeout=60, what="the resize during a pass")
    wait_for(lambda: roles(state_dir).count("worker") == 1, timeout=60, what="1 worker process")
    assert control.run(manager.wait(made["id"], ("running",), 30))["workers"]["ready"] == 1
    control.run(manager.stop(made["id"]))
    control.run(manager.wait(made["id"], ("stopped",), 30))
    assert states(control, made["id"]) == [
        "pending", "provisioning", "running", "scaling", "running", "stopping", "stopped",
    ]


def test_attach_by_name_and_progress_events(control, state_dir):
    first = Cluster(name="shared", n_workers=1, idle_timeout="7m", control=control)
    with dask.config.set({"coiled-lab.cluster.n-workers": 3, "coiled-lab.cluster.idle-timeout": "1h"}):
        second = Cluster(name="shared", control=control, shutdown_on_close=False)
    try:
        assert second.cluster_id == first.cluster_id
        assert roles(state_dir).count("worker") == 1  # attaching launched nothing
        # The attached Cluster's spec is the record's, not this kernel's defaults.
        assert (second.spec.n_workers, second.spec.idle_timeout) == (1, 420)
        progress = [e["data"] for e in control.manager.store.events(first.cluster_id) if e["kind"] == "progress"]
        assert [p["step"] for p in progress][:3] == ["network", "scheduler", "workers"]
        assert progress[-1] == {**progress[-1], "ready": 1, "target": 1}
    finally:
        second.close()
        assert control.run(control.get("shared"))["status"] == "running"
        first.close()
    assert control.run(control.get(first.cluster_id))["status"] == "stopped"


def test_forked_processes_are_detached_found_and_keep_no_secret(control, state_dir, monkeypatch):
    """The scheduler and workers are forked from a warm, pre-imported Python; each is still
    a session of its own, found by its command line, with the environment a new Python
    would get (none of the server's secrets) and random numbers of its own."""
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "the server's")
    monkeypatch.setenv("DASK_SOMETHING__TOKEN", "the server's")
    with Cluster(n_workers=2, control=control) as cluster, Client(cluster) as client:
        assert roles(state_dir) == forked(state_dir) == ["scheduler", "worker", "worker"]
        assert all(client.run(lambda: os.getsid(0) == os.getpid()).values())
        assert client.run_on_scheduler(lambda: os.getsid(0) == os.getpid())
        assert list(client.run(server_secrets).values()) == [[None, None]] * 2
        assert client.run_on_scheduler(server_secrets) == [None, None]
        assert client.run_on_scheduler(lambda: os.environ["COILED_LAB_CLUSTER_ID"]) == cluster.cluster_id
        draws = client.run(lambda: __import__("numpy").random.random())
        assert len(set(draws.values())) == 2
        assert client.submit(lambda x: x + 1, 1).result() == 2
    wait_for(lambda: not cluster_processes(state_dir), timeout=15, what="no process left")


def server_secrets() -> list:
    return [os.environ.get(k) for k in ("AWS_SECRET_ACCESS_KEY", "DASK_SOMETHING__TOKEN")]


def test_an_environment_of_its_own_gets_new_pythons(control, state_dir):
    """Variables a Python reads as it starts could not apply to a fork: a cluster with an
    environment of its own runs new Pythons."""
    with Cluster(n_workers=1, environ={"MY_SETTING": "1"}, control=control) as cluster, Client(cluster) as client:
        assert list(client.run(lambda: os.environ.get("MY_SETTING")).values()) == ["1"]
        assert forked(state_dir) == []


def test_workers_start_after_the_zygote_died(control, state_dir):
    """A zygote that died (the OOM killer, say) takes nothing with it and is replaced."""
    cluster = control.run(control.create({"n_workers": 1}))
    control.run(control.wait(cluster["id"], timeout=60))
    for zygote in zygotes():
        zygote.kill()
        zygote.wait(10)
    control.run(control.scale(cluster["id"], 2))
    wait_for(lambda: control.run(control.get(cluster["id"]))["workers"]["ready"] == 2, timeout=60, what="2 ready")
    assert roles(state_dir) == ["scheduler", "worker", "worker"]
    assert forked(state_dir) == ["worker"]  # by a new zygote; the first two outlived theirs
    control.run(control.stop(cluster["id"]))
    control.run(control.wait(cluster["id"], ("stopped",), 30))


def test_bad_input_starts_nothing_and_writes_nothing(control, state_dir, monkeypatch):
    for bad in ({"n_workers": -1}, {"n_workers": 10**6}, {"backend": "azure"}, {"wat": 1},
                {"n_workers": "two"}, {"worker_gpu": 1}, {"idle_timeout": "soon"}):
        with pytest.raises(ClusterSpecError):
            control.run(control.create(bad))
    # A valid request for a cloud this process has no credentials for is refused at once.
    from botocore.exceptions import NoCredentialsError

    for var in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_PROFILE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(state_dir / "none"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(state_dir / "none"))
    with pytest.raises(NoCredentialsError):
        control.run(control.create({"backend": "aws", "n_workers": 1}))
    from google.auth.exceptions import DefaultCredentialsError

    monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", str(state_dir / "none.json"))
    with pytest.raises(DefaultCredentialsError):
        control.run(control.create({"backend": "gcp", "n_workers": 1}))
    with pytest.raises(ClusterSpecError):
        Cluster(n_workers=-3, control=control)
    assert control.run(control.list()) == []
    assert control.manager.store.events() == []
    assert cluster_processes(state_dir) == []


def test_lost_worker_is_replaced(control, state_dir):
    cluster = control.run(control.create({"n_workers": 2}))
    control.run(control.wait(cluster["id"], timeout=60))
    victim = next(p for p in cluster_processes(state_dir) if "--name" in p.cmdline()
                  and "dask_worker" in " ".join(p.cmdline()))
    victim.send_signal(signal.SIGKILL)
    wait_for(lambda: victim.pid not in {p.pid for p in cluster_processes(state_dir)}, what="worker killed")
    wait_for(lambda: roles(state_dir).count("worker") == 2, timeout=30, what="replacement worker")
    wait_for(lambda: control.run(control.get(cluster["id"]))["workers"]["ready"] == 2, what="2 ready")
    control.run(control.stop(cluster["id"]))
    control.run(control.wait(cluster["id"], ("stopped",), 30))


def test_scheduler_crash_is_an_error_with_its_last_lines(control, state_dir):
    cluster = control.run(control.create({"n_workers": 1}))
    control.run(control.wait(cluster["id"], timeout=60))
    scheduler = next(p for p in cluster_processes(state_dir) if "distributed.cli.dask_scheduler" in p.cmdline())
    scheduler.send_signal(signal.SIGKILL)
    final = control.run(control.wait(cluster["id"], ("stopped",), 30))
    assert final["status"] == "error"
    assert "scheduler exited unexpectedly" in final["message"]
    assert "distributed.scheduler" in final["message"]  # its last log lines explain it
    wait_for(lambda: not cluster_processes(state_dir), timeout=15, what="workers stopped too")


class FlakyBackend(LocalBackend):
    """The real local backend with a launch that fails the first ``failures`` times."""

    def __init__(self, failures: int):
        super().__init__()
        self.failures = failures
        self.calls = 0

    async def launch_workers(self, cluster, count):
        self.calls += 1
        if self.calls <= self.failures:
            raise OSError(f"injected launch failure {self.calls}")
        return await super().launch_workers(cluster, count)


def test_transient_failures_are_retried(state_dir):
    backend = FlakyBackend(failures=2)
    control = InProcessControl(ClusterManager(state_dir, backends={"local": backend}))
    try:
        cluster = control.run(control.create({"n_workers": 1}))
        assert control.run(control.wait(cluster["id"], timeout=60))["status"] == "running"
        assert backend.calls == 3
        control.run(control.stop(cluster["id"]))
        control.run(control.wait(cluster["id"], ("stopped",), 30))
    finally:
        control.close()


def test_failed_passes_are_counted_in_the_store_across_a_restart(state_dir):
    """The count of failed passes lives in the cluster's record: a server restarted in the
    middle goes on counting toward max-retries, it does not start again at zero."""
    settings = {"coiled-lab.manager.max-retries": 4, "coiled-lab.manager.retry-backoff": 0.3}
    with dask.config.set(settings):
        first = FlakyBackend(failures=100)
        control = InProcessControl(ClusterManager(state_dir, backends={"local": first}))
        cluster = control.run(control.create({"n_workers": 1}))
        wait_for(lambda: control.manager.store.get_cluster(cluster["id"]).state.get("failed_passes", 0) >= 2,
                 timeout=30, what="two failed passes recorded")
        control.close()
        counted = Store(state_dir / "coiled-lab.sqlite").get_cluster(cluster["id"]).state["failed_passes"]
        second = FlakyBackend(failures=100)
        control = InProcessControl(ClusterManager(state_dir, backends={"local": second}))
        try:
            final = control.run(control.wait(cluster["id"], ("stopped",), 60))
            assert final["status"] == "error" and "injected launch failure" in final["message"]
            assert 2 <= counted < 4 and second.calls == 4 - counted
        finally:
            control.close()


def test_permanent_failure_ends_in_error_and_leaves_nothing(state_dir):
    backend = FlakyBackend(failures=100)
    control = InProcessControl(ClusterManager(state_dir, backends={"local": backend}))
    try:
        cluster = control.run(control.create({"n_workers": 2}))
        final = control.run(control.wait(cluster["id"], ("stopped",), 120))
        assert final["status"] == "error"
        assert "injected launch failure" in final["message"]
        assert backend.calls == control.manager.max_retries
        wait_for(lambda: not cluster_processes(state_dir), timeout=15, what="scheduler stopped")
        assert states(control, cluster["id"]) == ["pending", "provisioning", "error"]
    finally:
        control.close()


MANAGER_SCRIPT = textwrap.dedent(
    """
    import asyncio, json, sys
    from coiled_lab.control.manager import ClusterManager

    async def main():
        manager = await ClusterManager().start()
        rec = await manager.create({"n_workers": int(sys.argv[1])})
        if sys.argv[2] == "running":
            await manager.wait(rec["id"], timeout=60)
        print(json.dumps(rec), flush=True)
        await asyncio.sleep(3600)

    asyncio.run(main())
    """
)


@pytest.mark.parametrize("when", ["running", "provisioning"])
def test_new_manager_adopts_clusters_after_sigkill(state_dir, when):
    proc = subprocess.Popen([sys.executable, "-c", MANAGER_SCRIPT, "2", when], stdout=subprocess.PIPE, text=True)
    try:
        rec = json.loads(proc.stdout.readline())
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    before = {p.pid for p in cluster_processes(state_dir)}

    control = InProcessControl(ClusterManager(state_dir))
    try:
        adopted = control.run(control.wait(rec["id"], timeout=60))
        assert adopted["status"] == "running" and adopted["workers"]["ready"] == 2
        # Nothing was launched twice: exactly one scheduler and two workers.
        assert roles(state_dir) == ["scheduler", "worker", "worker"]
        if when == "running":
            assert {p.pid for p in cluster_processes(state_dir)} == before
        with Cluster(name=adopted["name"], control=control) as cluster, Client(cluster) as client:
            assert client.submit(lambda: 7).result() == 7
        wait_for(lambda: not cluster_processes(state_dir), timeout=15, what="no process left")
    finally:
        control.close()


def test_idle_timeout_stops_the_cluster_by_itself(control, state_dir):
    cluster = control.run(control.create({"n_workers": 1, "idle_timeout": 3, "no_client_timeout": "off"}))
    running = control.run(control.wait(cluster["id"], timeout=60))
    assert running["status"] == "running"
    wait_for(lambda: (control.run(control.get(cluster["id"]))["time_left"] or {}).get("idle_timeout") is not None,
             what="idle clock in the cluster's status")
    final = control.run(control.wait(cluster["id"], ("stopped",), 60))
    assert final["status"] == "stopped"
    assert "idle_timeout" in final["message"]
    wait_for(lambda: not cluster_processes(state_dir), timeout=15, what="no process left")


def test_no_client_timeout_counts_from_the_last_client(control, state_dir):
    cluster = control.run(control.create({"n_workers": 1, "no_client_timeout": 2, "idle_timeout": "off"}))
    control.run(control.wait(cluster["id"], timeout=60))
    time.sleep(3)  # no client has connected yet: the clock has not started
    assert control.run(control.get(cluster["id"]))["status"] == "running"
    with Cluster(name=cluster["name"], control=control, shutdown_on_close=False) as attached:
        with Client(attached) as client:
            assert client.submit(lambda: 1).result() == 1
    final = control.run(control.wait(cluster["id"], ("stopped",), 60))
    assert final["status"] == "stopped" and "no_client_timeout" in final["message"]


def test_logs_have_scheduler_and_worker_lines(control, state_dir):
    cluster = control.run(control.create({"n_workers": 1}))
    control.run(control.wait(cluster["id"], timeout=60))
    logs = control.run(control.logs(cluster["id"]))
    assert {r["role"] for r in logs} == {"scheduler", "worker"}
    only_scheduler = control.run(control.logs(cluster["id"], instance="scheduler"))
    assert only_scheduler and all(r["role"] == "scheduler" for r in only_scheduler)
    grep = control.run(control.logs(cluster["id"], q="Registered to"))
    assert grep and all("registered to" in r["message"].lower() for r in grep)
    assert len(control.run(control.logs(cluster["id"], limit=3))) == 3
    control.run(control.stop(cluster["id"]))
    control.run(control.wait(cluster["id"], ("stopped",), 30))
    # Logs stay readable after the cluster is gone.
    assert control.run(control.logs(cluster["id"], instance="worker"))


def test_timeouts_change_on_the_running_cluster(control, state_dir):
    from coiled_lab.errors import Conflict

    cluster = control.run(control.create({"n_workers": 1, "idle_timeout": "1h"}))
    control.run(control.wait(cluster["id"], timeout=60))
    manager = control.manager
    with pytest.raises(ClusterSpecError, match="cannot be changed on a live cluster"):
        control.run(manager.update(cluster["id"], {"backend": "aws"}))
    with pytest.raises(ClusterSpecError, match="idle_timeout"):
        control.run(manager.update(cluster["id"], {"idle_timeout": "soon"}))
    updated = control.run(manager.update(cluster["id"], {"idle_timeout": 2, "n_workers": 2}))
    assert updated["spec"]["idle_timeout"] == 2 and updated["workers"]["target"] == 2
    final = control.run(control.wait(cluster["id"], ("stopped",), 60))
    assert final["status"] == "stopped" and "idle_timeout of 2s" in final["message"]
    with pytest.raises(Conflict):
        control.run(manager.update(cluster["id"], {"n_workers": 3}))


def test_cleanup_finds_processes_the_store_thinks_are_gone(control, state_dir):
    cluster = control.run(control.create({"n_workers": 1}))
    control.run(control.wait(cluster["id"], timeout=60))
    store = control.manager.store
    survivors = cluster_processes(state_dir)
    # The store is told the cluster stopped, yet its processes still run (e.g. a crash
    # between stopping and recording it): cleanup must find them by their command line.
    store.update_cluster(cluster["id"], status="stopped", target="stopped")
    dry = control.run(control.cleanup(dry_run=True))
    assert dry["errors"] == [] and [c["id"] for c in dry["found"]] == [cluster["id"]]
    assert len(dry["found"][0]["instances"]) == 2
    assert {p.pid for p in cluster_processes(state_dir)} == {p.pid for p in survivors}
    control.run(control.cleanup())
    wait_for(lambda: not cluster_processes(state_dir), timeout=15, what="cleanup stopped them")


def test_async_cluster_starts_when_awaited_and_in_async_with(control, state_dir):
    """From a running loop, as dask-labextension's "+NEW" and async code make clusters."""
    import asyncio

    from distributed import Client

    from coiled_lab import Cluster

    async def main() -> None:
        async with Cluster(n_workers=1, asynchronous=True, control=control, name="async-with") as cluster:
            assert cluster.cluster_id and cluster.record["status"] == "running"
            async with Client(cluster, asynchronous=True) as client:
                assert await client.submit(lambda x: x + 1, 1) == 2
        assert (await control.get(cluster.cluster_id))["status"] == "stopped"

        cluster = await Cluster(n_workers=0, asynchronous=True, control=control, name="awaited")
        assert cluster.scheduler_address.startswith("tls://")
        assert await cluster is cluster  # a second await does not start a second cluster
        assert len([c for c in await control.list() if c["name"] == "awaited"]) == 1
        # Every method has its async twin: from a running loop each returns an awaitable.
        await cluster.scale(1)
        await cluster.wait_for_workers(1, timeout=60)
        assert cluster.record["workers"]["target"] == 1
        assert isinstance(await cluster.get_notifications(), list)
        assert "as_of" in await cluster.get_usage()
        assert "Cluster" in await cluster.get_logs()
        await cluster.scale(0)
        assert cluster.record["workers"]["target"] == 0
        await cluster.close()
        assert (await control.get(cluster.cluster_id))["status"] == "stopped"

    asyncio.run(main())


def test_adapt_keeps_the_bounds_with_the_cluster(control, state_dir):
    """cluster.adapt() as Coiled users call it: the bounds are the cluster's own (kept and
    acted on by the control plane), the size moves into them at once, (0, 0) clears them."""
    with Cluster(n_workers=3, control=control, name="adapting") as cluster:
        cluster.adapt(minimum=1, maximum=2)
        assert cluster.spec.adaptive == [1, 2] and cluster.record["workers"]["target"] == 2
        assert control.run(control.get("adapting"))["spec"]["adaptive"] == [1, 2]
        with pytest.raises(ClusterSpecError, match="maximum is needed"):
            cluster.adapt(minimum=1)
        with pytest.raises(ClusterSpecError, match="coiled-lab.adaptive.interval"):
            cluster.adapt(1, 2, interval="1s")
        with pytest.raises(ClusterSpecError) as beyond:  # the local ceiling (64), as for n_workers=[1, 100]
            cluster.adapt(1, 100)
        assert beyond.value.field == "n_workers" and "at most 64" in beyond.value.message
        cluster.adapt(0, 0)
        assert cluster.spec.adaptive is None
        assert control.run(control.get("adapting"))["spec"]["adaptive"] is None


def test_a_lowered_ceiling_leaves_a_running_cluster_alone(control, state_dir):
    """An admin lowers local.max-workers below a live cluster's size: new requests are
    refused, the live cluster's passes go on, and it stops cleanly with nothing left."""
    cluster = control.run(control.create({"n_workers": 4, "name": "before-the-change"}))
    control.run(control.wait(cluster["id"], timeout=120))
    with dask.config.set({"coiled-lab.local.max-workers": 2}):
        with pytest.raises(ClusterSpecError, match="at most 2 workers"):
            control.run(control.create({"n_workers": 3}))
        manager = control.manager
        for _ in range(3):  # passes of the live cluster, as the watch makes them
            control.run(manager._reconcile(cluster["id"]))
        assert control.run(control.get(cluster["id"]))["status"] == "running"
        assert control.run(control.stop(cluster["id"]))["status"] in ("stopping", "stopped")
        assert control.run(control.wait(cluster["id"], ("stopped", "error"), timeout=60))["status"] == "stopped"
    wait_for(lambda: not cluster_processes(state_dir), timeout=30, what="no dask process left")


def test_a_timeout_change_the_scheduler_does_not_take_changes_nothing(control, state_dir):
    """PATCH of a timeout while the scheduler does not answer (here: frozen with SIGSTOP):
    told as SchedulerUnreachable (HTTP 504) within seconds, and the stored value is the old one."""
    from coiled_lab.errors import SchedulerUnreachable

    cluster = control.run(control.create({"n_workers": 0, "name": "frozen", "idle_timeout": "30m"}))
    control.run(control.wait(cluster["id"], timeout=120))
    [scheduler] = [p for p in cluster_processes(state_dir) if any("dask_scheduler" in a for a in p.cmdline())]
    scheduler.suspend()
    try:
        started = time.monotonic()
        with pytest.raises(SchedulerUnreachable, match="timeouts are unchanged"):
            control.run(control.manager.update(cluster["id"], {"idle_timeout": "45m"}))
        assert time.monotonic() - started < 15
        assert control.run(control.get(cluster["id"]))["spec"]["idle_timeout"] == 1800
    finally:
        scheduler.resume()
    assert control.run(control.manager.update(cluster["id"], {"idle_timeout": "45m"}))["spec"]["idle_timeout"] == 2700
    control.run(control.stop(cluster["id"]))
    control.run(control.wait(cluster["id"], ("stopped",), timeout=60))
