"""Faults injected where AWS answers (the proxy) or where machines run (the emulator):
throttling, no capacity in a zone, no spot capacity, a bootstrap that crashes, and the
manager killed while a cluster starts."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap

import pytest

from coiled_lab import config
from coiled_lab.control.inprocess import InProcessControl
from coiled_lab.control.manager import ClusterManager

from ..conftest import wait_for

pytestmark = pytest.mark.slow


def notifications(control, cluster_id: str) -> list[str]:
    return [e["data"]["message"] for e in control.manager.store.events(cluster_id) if e["kind"] == "notification"]


def stop(control, cluster_id: str, moto) -> None:
    control.run(control.stop(cluster_id))
    control.run(control.wait(cluster_id, ("stopped",), 60))
    wait_for(lambda: not moto.tagged(cluster_id), timeout=30, what=f"nothing tagged with {cluster_id}")


def test_throttling_bursts_are_absorbed_by_botocore_retries(aws_control, emulator, proxy, moto):
    bursts = {action: (times, proxy.throttle(action, times)) for action, times in [
        ("DescribeSubnets", 2), ("CreateLaunchTemplate", 2), ("CreateFleet", 2),
        ("DescribeInstances", 3), ("TerminateInstances", 1), ("FilterLogEvents", 2)]}
    cluster = aws_control.run(aws_control.create({"backend": "aws", "n_workers": 1}))
    assert aws_control.run(aws_control.wait(cluster["id"], timeout=120))["status"] == "running"
    assert aws_control.run(aws_control.logs(cluster["id"], instance="scheduler"))
    stop(aws_control, cluster["id"], moto)
    assert {action: done[0] for action, (_, done) in bursts.items()} == \
        {action: times for action, (times, _) in bursts.items()}
    events = aws_control.manager.store.events(cluster["id"])
    assert [e["data"]["status"] for e in events if e["kind"] == "state"] == \
        ["pending", "provisioning", "running", "stopping", "stopped"]


def test_no_capacity_in_a_zone_moves_the_cluster_to_the_next_zone(aws_control, emulator, proxy, moto, network):
    first, second = sorted(network["subnets"])[:2]
    hits = proxy.insufficient_capacity({network["subnets"][first]})
    cluster = aws_control.run(aws_control.create({"backend": "aws", "n_workers": 2}))
    assert aws_control.run(aws_control.wait(cluster["id"], timeout=120))["status"] == "running"
    assert {i["Placement"]["AvailabilityZone"] for i in moto.instances(cluster["id"])} == {second}
    assert hits[0] == 1  # the scheduler's request; the workers only ever asked for its zone
    assert any(f"no capacity for the scheduler (m6i.large) in {first}; the cluster runs in {second}" in m
               for m in notifications(aws_control, cluster["id"]))
    stop(aws_control, cluster["id"], moto)


def test_workers_leave_a_full_zone_only_when_allowed(aws_control, emulator, proxy, moto, network):
    first, second = sorted(network["subnets"])[:2]
    spread = aws_control.run(aws_control.create({"backend": "aws", "n_workers": 0, "allow_cross_zone": True}))
    single = aws_control.run(aws_control.create({"backend": "aws", "n_workers": 0}))
    for cluster in (spread, single):
        aws_control.run(aws_control.wait(cluster["id"], timeout=120))
        assert {i["Placement"]["AvailabilityZone"] for i in moto.instances(cluster["id"])} == {first}

    proxy.insufficient_capacity({network["subnets"][first]})
    aws_control.run(aws_control.scale(spread["id"], 1))
    assert aws_control.run(aws_control.wait(spread["id"], timeout=120))["status"] == "running"
    assert {i["Placement"]["AvailabilityZone"] for i in moto.instances(spread["id"], "worker")} == {second}

    aws_control.run(aws_control.scale(single["id"], 1))
    failed = aws_control.run(aws_control.wait(single["id"], ("stopped",), timeout=120))
    assert failed["status"] == "error"
    assert "InsufficientInstanceCapacity" in failed["message"] and first in failed["message"]
    wait_for(lambda: not moto.tagged(single["id"]), timeout=30, what="the failed cluster's machines gone")
    stop(aws_control, spread["id"], moto)


def test_spot_with_fallback_asks_on_demand_for_what_spot_lacks(aws_control, emulator, proxy, moto):
    denied = proxy.no_spot_capacity()
    before = len(proxy.calls("CreateFleet"))
    cluster = aws_control.run(aws_control.create(
        {"backend": "aws", "n_workers": 2, "spot_policy": "spot_with_fallback"}))
    assert aws_control.run(aws_control.wait(cluster["id"], timeout=120))["status"] == "running"
    workers = moto.instances(cluster["id"], "worker")
    assert len(workers) == 2 and not any(w.get("InstanceLifecycle") == "spot" for w in workers)
    requests = [(c.params["TargetCapacitySpecification.DefaultTargetCapacityType"],
                 int(c.params["TargetCapacitySpecification.TotalTargetCapacity"]))
                for c in proxy.calls("CreateFleet")[before:]]
    assert requests == [("on-demand", 1), ("spot", 2), ("on-demand", 2)]  # scheduler, spot, fallback
    assert denied[0] == 1
    assert any(m.startswith("spot capacity for 0 of 2 workers") and m.endswith("the other 2 on-demand")
               for m in notifications(aws_control, cluster["id"]))
    stop(aws_control, cluster["id"], moto)


def test_a_crashing_bootstrap_ends_in_error_with_its_boot_log(aws_control, emulator, proxy, moto):
    broken = "ami-0b40ce0b00b40ce0b"
    emulator.broken_images.add(broken)
    proxy.parameter(config.get("aws.images")["x86_64"], broken)
    cluster = aws_control.run(aws_control.create({"backend": "aws", "n_workers": 1}))
    final = aws_control.run(aws_control.wait(cluster["id"], ("stopped",), timeout=120))
    assert final["status"] == "error"
    assert "scheduler exited unexpectedly" in final["message"]
    # It never reached CloudWatch: its console output is the boot log in the message.
    assert "Fatal Python error" in final["message"], final["message"]
    assert not moto.streams(f"{cluster['id']}/")
    wait_for(lambda: not moto.tagged(cluster["id"]), timeout=30, what="nothing tagged")


def test_a_launch_template_whose_answer_was_lost_is_removed_at_stop(aws_control, emulator, proxy, moto):
    # The workers' template is made, then the connection drops: botocore asks again with
    # the same name and EC2 (moto) says it exists. The launch is retried; the stop sweeps.
    lost = proxy.fail("CreateLaunchTemplate", "reset-after", times=1, skip=1)
    cluster = aws_control.run(aws_control.create({"backend": "aws", "n_workers": 1}))
    assert aws_control.run(aws_control.wait(cluster["id"], timeout=120))["status"] == "running"
    assert lost[0] == 1
    stop(aws_control, cluster["id"], moto)


def test_a_scheduler_launched_twice_is_stopped(aws_control, emulator, proxy, moto):
    # The scheduler's fleet is launched, then the connection drops: botocore sends it again
    # (moto ignores the ClientToken that makes this safe on EC2) and a second one starts.
    lost = proxy.fail("CreateFleet", "reset-after", times=1)
    cluster = aws_control.run(aws_control.create({"backend": "aws", "n_workers": 1}))
    running = aws_control.run(aws_control.wait(cluster["id"], timeout=120))
    assert running["status"] == "running" and lost[0] == 1
    assert len([i for i in moto.all_instances(cluster["id"])]) == 3  # two schedulers were launched
    wait_for(lambda: len(moto.instances(cluster["id"], "scheduler")) == 1, timeout=30, what="one scheduler left")
    stop(aws_control, cluster["id"], moto)


MANAGER = textwrap.dedent(
    """
    import asyncio, json
    from coiled_lab.control.manager import ClusterManager

    async def main():
        manager = await ClusterManager().start()
        record = await manager.create({"backend": "aws", "n_workers": 2})
        print(json.dumps(record), flush=True)
        await asyncio.sleep(3600)

    asyncio.run(main())
    """
)


def test_manager_killed_while_provisioning_then_restarted(state_dir, emulator, moto):
    proc = subprocess.Popen([sys.executable, "-c", MANAGER], stdout=subprocess.PIPE, text=True, env=os.environ)
    try:
        record = json.loads(proc.stdout.readline())
        wait_for(lambda: moto.instances(record["id"], "scheduler"), timeout=60, what="the scheduler's instance")
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert aws_state(state_dir, record["id"]) == "provisioning"

    control = InProcessControl(ClusterManager(state_dir))
    try:
        adopted = control.run(control.wait(record["id"], timeout=120))
        assert adopted["status"] == "running" and adopted["workers"]["ready"] == 2
        # Adopted, not launched twice: one scheduler, two workers.
        assert len(moto.instances(record["id"], "scheduler")) == 1
        assert len(moto.instances(record["id"], "worker")) == 2
        stop(control, record["id"], moto)
    finally:
        control.close()


def aws_state(state_dir, cluster_id: str) -> str:
    from coiled_lab.control.store import Store

    store = Store(state_dir / "coiled-lab.sqlite")
    try:
        return str(store.get_cluster(cluster_id).status)
    finally:
        store.close()
