"""Coiled's cloud-only keywords on GCE (issue 20), read at the fake: ``worker_disk_size``
is the workers' boot disk, ``allow_ssh_from`` a firewall rule opening 22 to that CIDR
alone and targeting this cluster's VMs, ``use_best_zone=False`` keeps the scheduler in the
first zone, ``scheduler_cpu`` sizes the scheduler, and ``arm`` is refused before any call."""

from __future__ import annotations

import asyncio

import pytest

from coiled_lab.backends.gcp import GCPBackend
from coiled_lab.backends.gcp.session import GCPError
from coiled_lab.spec import ClusterSpecError, parse_spec

from .conftest import labelled
from .test_backend import context, launch


def test_disk_size_ssh_and_scheduler_size_reach_gce(network, fake, state_dir, gcp_env):
    backend = GCPBackend()
    ctx = context(state_dir, "90c000000001", n_workers=1, worker_disk_size=77, allow_ssh_from="198.51.100.0/24",
                  scheduler_cpu=8)
    asyncio.run(launch(backend, ctx, 1))
    try:
        (scheduler,) = labelled(fake, ctx.id, "scheduler")
        (worker,) = labelled(fake, ctx.id, "worker")
        assert int(worker["disks"][0]["initializeParams"]["diskSizeGb"]) == 77
        assert int(scheduler["disks"][0]["initializeParams"]["diskSizeGb"]) != 77  # the scheduler keeps its own
        assert scheduler["machineType"].rsplit("/", 1)[-1].endswith("-8")  # 8 vCPUs
        tag = ctx.state["ssh_tag"]
        assert tag in scheduler["tags"]["items"] and tag in worker["tags"]["items"]
        (rule,) = [c.body for c in fake.calls("compute.firewalls.insert") if c.body["name"] == tag]
        assert rule["sourceRanges"] == ["198.51.100.0/24"] and rule["targetTags"] == [tag]
        assert rule["allowed"] == [{"IPProtocol": "tcp", "ports": ["22"]}]
    finally:
        asyncio.run(backend.cleanup(ctx))


def test_use_best_zone_false_stays_in_the_first_zone(network, fake, state_dir, gcp_env):
    backend = GCPBackend()
    best = context(state_dir, "90c000000002", n_workers=0)
    best.state = asyncio.run(backend.ensure_network(best))
    zones = asyncio.run(backend.types.zones(backend.region(best)))
    fake.exhaust(zones[0])
    try:
        assert asyncio.run(backend.launch_scheduler(best)).zone != zones[0]  # moved on, as by default
        fixed = context(state_dir, "90c000000003", n_workers=0, use_best_zone=False)
        fixed.state = asyncio.run(backend.ensure_network(fixed))
        with pytest.raises(GCPError, match=f"no capacity for the scheduler in any zone \\({zones[0]}: "):
            asyncio.run(backend.launch_scheduler(fixed))
    finally:
        fake.reset()
        asyncio.run(backend.cleanup(best))


def test_arm_is_refused_before_any_call(gcp_env, fake):
    before = fake.count()
    with pytest.raises(ClusterSpecError) as refused:
        GCPBackend().check_spec(parse_spec({"backend": "gcp", "arm": True}))
    assert refused.value.field == "arm" and "aws" in refused.value.message
    assert fake.count() == before
