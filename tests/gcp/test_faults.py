"""Faults injected where Google answers (the fake) or where VMs run (the emulator):
throttling and server errors, no capacity in a zone, no Spot capacity, a bootstrap that
crashes; VMs left behind by a lost record, found again by label; and an idle cluster whose
server is gone, whose VMs delete themselves."""

from __future__ import annotations

import pytest

from coiled_lab.backends.base import ClusterContext
from coiled_lab.backends.gcp import GCPBackend
from coiled_lab.cli import main
from coiled_lab.spec import parse_spec
from coiled_lab.tls import TLSMaterial

from ..conftest import wait_for
from .conftest import REGION, labelled

pytestmark = pytest.mark.slow


def cluster_disks(fake, cluster_id: str) -> list[str]:
    """The fake's disks made for the cluster's VMs (they carry its label)."""
    return [d["name"] for d in fake.disks.values() if d.get("labels", {}).get("coiled-lab-cluster") == cluster_id]


def notifications(control, cluster_id: str) -> list[str]:
    return [e["data"]["message"] for e in control.manager.store.events(cluster_id) if e["kind"] == "notification"]


def stop(control, cluster_id: str, fake) -> None:
    control.run(control.stop(cluster_id))
    control.run(control.wait(cluster_id, ("stopped",), 60))
    wait_for(lambda: not labelled(fake, cluster_id, alive=False), timeout=30, what=f"no VM labelled {cluster_id}")


def test_throttling_and_server_errors_are_retried(gcp_control, emulator, fake):
    bursts = {method: (times, fake.fail(method, status, times)) for method, status, times in [
        ("compute.subnetworks.get", 503, 2), ("compute.instances.insert", 429, 1),
        ("compute.regionInstances.bulkInsert", 429, 2), ("compute.instances.aggregatedList", 500, 2),
        ("logging.entries.list", 429, 1)]}
    cluster = gcp_control.run(gcp_control.create({"backend": "gcp", "n_workers": 1}))
    assert gcp_control.run(gcp_control.wait(cluster["id"], timeout=120))["status"] == "running"
    assert gcp_control.run(gcp_control.logs(cluster["id"], instance="scheduler"))
    stop(gcp_control, cluster["id"], fake)
    assert {method: done[0] for method, (_, done) in bursts.items()} == \
        {method: times for method, (times, _) in bursts.items()}
    events = gcp_control.manager.store.events(cluster["id"])
    assert [e["data"]["status"] for e in events if e["kind"] == "state"] == \
        ["pending", "provisioning", "running", "stopping", "stopped"]


def test_answers_lost_after_the_work_make_no_vm_twice(gcp_control, emulator, fake):
    # GCE made the VMs, but its answer never came back: the retry (same request id) must
    # not make the scheduler again nor two more workers.
    lost = {method: fake.fail(method, 503, 1, after=True)
            for method in ("compute.instances.insert", "compute.regionInstances.bulkInsert")}
    cluster = gcp_control.run(gcp_control.create({"backend": "gcp", "n_workers": 2}))
    assert gcp_control.run(gcp_control.wait(cluster["id"], timeout=120))["status"] == "running"
    assert {m: done[0] for m, done in lost.items()} == {m: 1 for m in lost}
    assert len(labelled(fake, cluster["id"], "scheduler")) == 1
    assert len(labelled(fake, cluster["id"], "worker")) == 2
    for method in lost:
        tries = [c.query["requestId"] for c in fake.calls(method)
                 if (c.body.get("instanceProperties") or c.body)["labels"]["coiled-lab-cluster"] == cluster["id"]]
        assert len(tries) == 2 and tries[0] == tries[1], (method, tries)
    stop(gcp_control, cluster["id"], fake)


def test_no_capacity_in_a_zone_moves_the_cluster_to_the_next_zone(gcp_control, emulator, fake):
    fake.exhaust("us-central1-a")
    cluster = gcp_control.run(gcp_control.create({"backend": "gcp", "n_workers": 2}))
    assert gcp_control.run(gcp_control.wait(cluster["id"], timeout=120))["status"] == "running"
    assert {v["zone"].rsplit("/", 1)[-1] for v in labelled(fake, cluster["id"])} == {"us-central1-b"}
    assert any("no capacity for the scheduler (e2-standard-2) in us-central1-a; the cluster runs in us-central1-b"
               in m for m in notifications(gcp_control, cluster["id"]))
    # The workers asked for the scheduler's zone only, in one request.
    (bulk,) = [c for c in fake.calls("compute.regionInstances.bulkInsert")
               if c.body["instanceProperties"]["labels"]["coiled-lab-cluster"] == cluster["id"]]
    locations = bulk.body["locationPolicy"]["locations"]
    assert [z for z, p in locations.items() if p["preference"] == "ALLOW"] == ["zones/us-central1-b"]
    stop(gcp_control, cluster["id"], fake)


def test_workers_leave_a_full_zone_only_when_allowed(gcp_control, emulator, fake):
    spread = gcp_control.run(gcp_control.create({"backend": "gcp", "n_workers": 0, "allow_cross_zone": True}))
    single = gcp_control.run(gcp_control.create({"backend": "gcp", "n_workers": 0}))
    for cluster in (spread, single):
        gcp_control.run(gcp_control.wait(cluster["id"], timeout=120))
        assert {v["zone"].rsplit("/", 1)[-1] for v in labelled(fake, cluster["id"])} == {"us-central1-a"}

    fake.exhaust("us-central1-a")
    gcp_control.run(gcp_control.scale(spread["id"], 1))
    assert gcp_control.run(gcp_control.wait(spread["id"], timeout=120))["status"] == "running"
    assert {v["zone"].rsplit("/", 1)[-1] for v in labelled(fake, spread["id"], "worker")} == {"us-central1-b"}
    assert any("run in us-central1-b, not in the scheduler's zone us-central1-a" in m
               for m in notifications(gcp_control, spread["id"]))

    gcp_control.run(gcp_control.scale(single["id"], 1))
    failed = gcp_control.run(gcp_control.wait(single["id"], ("stopped",), timeout=120))
    assert failed["status"] == "error"
    assert "ZONE_RESOURCE_POOL_EXHAUSTED" in failed["message"] and "us-central1-a" in failed["message"]
    wait_for(lambda: not labelled(fake, single["id"], alive=False), timeout=30, what="the failed cluster's VMs gone")
    stop(gcp_control, spread["id"], fake)


def test_no_spot_capacity_falls_back_to_on_demand_when_allowed(gcp_control, emulator, fake):
    fake.spot_stockout = True
    fallback = gcp_control.run(gcp_control.create(
        {"backend": "gcp", "n_workers": 2, "spot_policy": "spot_with_fallback"}))
    spot_only = gcp_control.run(gcp_control.create({"backend": "gcp", "n_workers": 1, "spot_policy": "spot"}))
    assert gcp_control.run(gcp_control.wait(fallback["id"], timeout=120))["status"] == "running"
    workers = labelled(fake, fallback["id"], "worker")
    assert [w["scheduling"]["provisioningModel"] for w in workers] == ["STANDARD", "STANDARD"]
    assert any("no Spot capacity for 2 workers" in m and "on demand" in m
               for m in notifications(gcp_control, fallback["id"]))
    requested = [c.body["instanceProperties"]["scheduling"] for c in fake.calls("compute.regionInstances.bulkInsert")
                 if c.body["instanceProperties"]["labels"]["coiled-lab-cluster"] == fallback["id"]]
    assert [s["provisioningModel"] for s in requested] == ["SPOT", "STANDARD"]
    assert requested[0]["instanceTerminationAction"] == "DELETE"

    failed = gcp_control.run(gcp_control.wait(spot_only["id"], ("stopped",), timeout=120))
    assert failed["status"] == "error" and "ZONE_RESOURCE_POOL_EXHAUSTED" in failed["message"]
    wait_for(lambda: not labelled(fake, spot_only["id"], alive=False), timeout=30, what="the failed cluster's VMs gone")
    stop(gcp_control, fallback["id"], fake)


def test_a_bootstrap_that_crashes_is_an_error_saying_why_and_its_vm_deletes_itself(gcp_control, emulator, fake):
    emulator.broken_roles.add("scheduler")
    cluster = gcp_control.run(gcp_control.create({"backend": "gcp", "n_workers": 1}))
    final = gcp_control.run(gcp_control.wait(cluster["id"], ("stopped",), timeout=120))
    assert final["status"] == "error"
    # What the VM's python3 printed, sent to Cloud Logging by its startup-script before it went.
    assert "Fatal Python error: init_fs_encoding" in final["message"]
    (scheduler,) = [c.body["name"] for c in fake.calls("compute.instances.insert")
                    if c.body["labels"]["coiled-lab-cluster"] == cluster["id"]]
    # The VM deleted itself (with its own token): it was never left stopped, its disk went with it.
    first = next(c for c in fake.calls("compute.instances.delete") if c.path.endswith(f"/{scheduler}"))
    assert first.token in emulator.tokens()
    wait_for(lambda: not labelled(fake, cluster["id"], alive=False), timeout=30, what="the failed cluster's VMs gone")
    assert not cluster_disks(fake, cluster["id"])


def test_an_idle_cluster_without_its_server_deletes_itself_disks_and_all(state_dir, emulator, fake):
    from coiled_lab.control.inprocess import InProcessControl
    from coiled_lab.control.manager import ClusterManager

    control = InProcessControl(ClusterManager(state_dir))
    try:
        cluster = control.run(control.create({"backend": "gcp", "n_workers": 1, "idle_timeout": "45s"}))
        assert control.run(control.wait(cluster["id"], timeout=180))["status"] == "running"
        vms = {v["name"] for v in labelled(fake, cluster["id"])}
        assert len(vms) == 2 and len(cluster_disks(fake, cluster["id"])) == 2
    finally:
        control.close()  # the Jupyter server is gone: nobody is left to delete anything
    # Idle, the scheduler stops itself; its worker ends once it has lost it. Each VM then
    # deletes itself, with its own token; no VM is left stopped, no disk is left.
    wait_for(lambda: not labelled(fake, cluster["id"], alive=False), timeout=150, interval=1,
             what="every VM of the idle cluster gone")
    assert not cluster_disks(fake, cluster["id"])
    deleted_by = {c.path.rsplit("/", 1)[-1]: c.token for c in fake.calls("compute.instances.delete")}
    assert {name: deleted_by.get(name) in emulator.tokens() for name in vms} == {name: True for name in vms}


def test_cleanup_finds_vms_of_a_lost_cluster_by_label(emulator, fake, state_dir, capsys):
    # A launch whose record was lost (a crash right after it): only the label knows it.
    cluster_id = "0123456789ab"
    directory = state_dir / "clusters" / cluster_id
    directory.mkdir(parents=True)
    ctx = ClusterContext(id=cluster_id, name="lost", spec=parse_spec({"backend": "gcp", "n_workers": 0}),
                         tls=TLSMaterial.generate(cluster_id), directory=directory)
    backend = GCPBackend()

    async def launch() -> None:
        ctx.state = await backend.ensure_network(ctx)
        await backend.describe(ctx)
        await backend.launch_scheduler(ctx)

    import asyncio

    asyncio.run(launch())
    assert len(labelled(fake, cluster_id)) == 1

    assert main(["cleanup", "--dry-run", "--gcp-region", REGION]) == 0
    assert f"would remove 1 VM(s) of cluster {cluster_id} in {REGION}" in capsys.readouterr().out
    assert len(labelled(fake, cluster_id)) == 1
    assert main(["cleanup", "--gcp-region", REGION]) == 0
    assert f"removed 1 VM(s) of cluster {cluster_id}" in capsys.readouterr().out
    assert not labelled(fake, cluster_id, alive=False)
    assert main(["cleanup", "--gcp-region", REGION]) == 0
    assert "nothing to clean up" in capsys.readouterr().out
