"""The backend's calls themselves, in a region the EC2 emulator does not boot (nothing runs
there): how many AWS requests a launch and a stop take, GPU launches, console output for
silent machines, idempotent stops, and ``coiled-lab cleanup`` finding leftovers by tag."""

from __future__ import annotations

import asyncio
import random
import secrets
import time
from collections import Counter
from pathlib import Path

import boto3
import pytest

from coiled_lab import config
from coiled_lab.backends.aws import AWSBackend
from coiled_lab.backends.base import ClusterContext
from coiled_lab.spec import ClusterSpecError, parse_spec
from coiled_lab.tls import TLSMaterial

from ..conftest import wait_for
from .unpack import user_data_config

REGION = "us-west-2"


@pytest.fixture(scope="module")
def west(aws_env):
    """``setup aws`` in a region of its own."""
    from coiled_lab.cli import main

    assert main(["setup", "aws", "--region", REGION, "--vpc-cidr", f"10.{random.randint(200, 254)}.0.0/16"]) == 0


def counted_backend() -> tuple[AWSBackend, Counter]:
    """A backend whose boto3 session counts its API calls (botocore's event hooks)."""
    session = boto3.Session()
    calls: Counter = Counter()
    session.events.register("before-call", lambda event_name, **_: calls.update([event_name.split(".", 2)[2]]))
    return AWSBackend(session), calls


def context(state_dir: Path, **spec) -> ClusterContext:
    cluster_id = secrets.token_hex(6)
    directory = state_dir / "clusters" / cluster_id
    directory.mkdir(parents=True)
    return ClusterContext(id=cluster_id, name=f"test-{cluster_id[:6]}", tls=TLSMaterial.generate(cluster_id),
                          spec=parse_spec({"backend": "aws", "region": REGION, **spec}), directory=directory)


async def launch(backend: AWSBackend, ctx: ClusterContext) -> list:
    """What the manager's first reconcile pass asks of a backend."""
    ctx.state = await backend.ensure_network(ctx)
    await backend.describe(ctx)
    scheduler = await backend.launch_scheduler(ctx)
    workers = await backend.launch_workers(ctx, ctx.spec.n_workers)
    assert await backend.scheduler_address(ctx, scheduler)
    return [scheduler, *workers]


async def stop(backend: AWSBackend, ctx: ClusterContext, launched: list) -> None:
    """What the manager's teardown asks, once the cluster has run for a while."""
    await asyncio.sleep(float(config.get("aws.poll-interval")) + 0.1)  # its view of the cluster is stale
    running = {i.id: i for i in launched}
    running.update({i.id: i for i in await backend.describe(ctx)})
    await backend.stop_instances(ctx, list(running.values()))
    await backend.cleanup(ctx)


@pytest.mark.parametrize("n_workers", [1, 50])
def test_api_calls_to_launch_and_to_stop(west, state_dir, moto, n_workers):
    backend, calls = counted_backend()
    ctx = context(state_dir, n_workers=n_workers)
    launched = asyncio.run(launch(backend, ctx))
    launch_calls = dict(calls)
    assert len(launched) == n_workers + 1
    assert sum(launch_calls.values()) <= 15, launch_calls
    assert launch_calls["CreateFleet"] == 2  # the scheduler, then every worker at once
    calls.clear()
    asyncio.run(stop(backend, ctx, launched))
    assert sum(calls.values()) <= 3, dict(calls)
    left = moto.tagged(ctx.id, REGION)  # (moto keeps terminated machines' root volumes)
    assert not left.get("instances") and not left.get("launch_templates")


def test_gpu_workers_get_the_gpu_image_and_dask_cuda(west, state_dir, proxy):
    gpu_image = "ami-0123456789abcdef0"
    proxy.parameter(config.get("aws.images")["gpu"], gpu_image)  # a public parameter moto lacks
    backend, _ = counted_backend()
    ctx = context(state_dir, n_workers=1, worker_gpu=1)
    before = len(proxy.calls("CreateLaunchTemplate"))
    launched = asyncio.run(launch(backend, ctx))
    scheduler_template, worker_template = [c.params for c in proxy.calls("CreateLaunchTemplate")[before:]]
    assert worker_template["LaunchTemplateData.ImageId"] == gpu_image
    assert scheduler_template["LaunchTemplateData.ImageId"] != gpu_image
    [worker_type] = asyncio.run(backend.types.named(REGION, [launched[1].vm_type], "worker_vm_types"))
    assert worker_type.kind == "gpu" and worker_type.gpu_maker == "NVIDIA"
    assert user_data_config(worker_template["LaunchTemplateData.UserData"])["gpu"] is True
    asyncio.run(stop(backend, ctx, launched))


def test_unknown_instance_type_names_the_field(west, state_dir):
    backend, _ = counted_backend()
    ctx = context(state_dir, n_workers=1, worker_vm_types=["m6i.xlarge", "z9.huge"])
    ctx.state = asyncio.run(backend.ensure_network(ctx))
    with pytest.raises(ClusterSpecError) as info:
        asyncio.run(backend.launch_scheduler(ctx))
    assert info.value.field == "worker_vm_types" and "z9.huge" in str(info.value)


def test_a_region_aws_does_not_have_is_refused_without_a_call(aws_env):
    backend, calls = counted_backend()
    spec = parse_spec({"backend": "aws", "region": "us-east-99"})
    for refused in (lambda: backend.check_spec(spec), lambda: asyncio.run(backend.price_inputs(spec)),
                    lambda: asyncio.run(backend.catalog("us-east-99"))):
        with pytest.raises(ClusterSpecError) as info:
            refused()
        assert info.value.field == "region" and "us-east-99" in str(info.value) and "eu-west-1" in str(info.value)
    assert not calls
    backend.check_spec(parse_spec({"backend": "aws", "region": "ap-southeast-2"}))


def test_silent_machines_show_their_console_and_stops_are_idempotent(west, state_dir, proxy):
    backend, _ = counted_backend()
    ctx = context(state_dir, n_workers=1)
    launched = asyncio.run(launch(backend, ctx))
    ctx.instances = launched
    records = asyncio.run(backend.logs(ctx))  # nothing booted here: no stream at all
    assert {r.role for r in records} == {"scheduler", "worker"}
    assert all(r.instance in {i.id for i in launched} for r in records)
    before = len(proxy.calls("GetConsoleOutput"))
    assert asyncio.run(backend.logs(ctx, since=time.time() - 60)) == []  # a tail never reads consoles
    assert len(proxy.calls("GetConsoleOutput")) == before

    gone = type(launched[0])(id="i-0123456789abcdef0", role="worker")
    for _ in range(2):
        asyncio.run(backend.stop_instances(ctx, [*launched, gone]))
    assert asyncio.run(backend.cleanup(ctx)) == []


def test_cleanup_removes_what_unknown_clusters_left_and_spares_live_ones(west, state_dir, moto, capsys):
    from coiled_lab.cli import main
    from coiled_lab.control.inprocess import InProcessControl

    # A cluster this store runs (it never boots here, so it stays live: provisioning).
    control = InProcessControl.shared()
    try:
        live = control.run(control.create({"backend": "aws", "region": REGION, "n_workers": 1}))
        wait_for(lambda: len(moto.instances(live["id"], region=REGION)) == 2, what="the live cluster's machines")
        # What a crashed process left: machines, a launch template and a volume of a cluster
        # the store never recorded.
        backend, _ = counted_backend()
        orphan = context(state_dir, n_workers=2)
        asyncio.run(launch(backend, orphan))
        ec2 = moto.client("ec2", REGION)
        tags = [{"Key": "coiled-lab:cluster", "Value": orphan.id},
                {"Key": "coiled-lab:owner", "Value": backend._tags(orphan, "worker")["coiled-lab:owner"]}]
        ec2.create_launch_template(LaunchTemplateName=f"coiled-lab-{orphan.id}-left", LaunchTemplateData={},
                                   TagSpecifications=[{"ResourceType": "launch-template", "Tags": tags}])
        volume = ec2.create_volume(AvailabilityZone=f"{REGION}a", Size=8,
                                   TagSpecifications=[{"ResourceType": "volume", "Tags": tags}])["VolumeId"]

        assert main(["cleanup", "--aws-region", REGION, "--dry-run"]) == 0
        out = capsys.readouterr().out
        assert f"would remove 3 instance(s), 1 launch template(s), 1 volume(s) of cluster {orphan.id}" in out
        assert live["id"] not in out
        assert moto.tagged(orphan.id, REGION)["instances"]

        assert main(["cleanup", "--aws-region", REGION]) == 0
        assert f"removed 3 instance(s), 1 launch template(s), 1 volume(s) of cluster {orphan.id}" in \
            capsys.readouterr().out
        left = moto.tagged(orphan.id, REGION)
        assert not left.get("instances") and not left.get("launch_templates") and volume not in left.get("volumes", [])
        assert len(moto.instances(live["id"], region=REGION)) == 2
        control.run(control.stop(live["id"]))
        control.run(control.wait(live["id"], ("stopped",), 60))
        assert not moto.instances(live["id"], region=REGION)
    finally:
        InProcessControl.reset_shared()
