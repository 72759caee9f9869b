"""Coiled's cloud-only keywords on EC2 (issue 20), through the backend's own calls in a
region the EC2 emulator does not boot: ``arm`` launches Graviton types from the arm64
image, ``worker_disk_size`` is the workers' root disk in their launch template,
``allow_ssh_from`` opens port 22 to that CIDR alone, and ``use_best_zone=False`` keeps the
cluster in the first zone even when it has no capacity."""

from __future__ import annotations

import asyncio
import random
from pathlib import Path

import boto3
import pytest

from coiled_lab import config
from coiled_lab.backends.aws import AWSBackend
from coiled_lab.backends.aws.session import AWSError
from coiled_lab.backends.base import ClusterContext
from coiled_lab.bootstrap.vm import Identity, dask_command
from coiled_lab.spec import ClusterSpecError, parse_spec

from .test_backend import context as backend_context
from .unpack import user_data_config

REGION = "ap-northeast-1"


@pytest.fixture(scope="module")
def tokyo(aws_env) -> dict[str, str]:
    """``setup aws`` in a region of its own; its subnet per zone."""
    from coiled_lab.cli import main

    cidr = f"10.{random.randint(100, 199)}.0.0/16"
    assert main(["setup", "aws", "--region", REGION, "--vpc-cidr", cidr]) == 0
    ec2 = boto3.client("ec2", region_name=REGION)
    vpc = ec2.describe_vpcs(Filters=[{"Name": "cidr", "Values": [cidr]}])["Vpcs"][0]["VpcId"]
    return {s["AvailabilityZone"]: s["SubnetId"]
            for s in ec2.describe_subnets(Filters=[{"Name": "vpc-id", "Values": [vpc]}])["Subnets"]}


def context(state_dir: Path, **spec) -> ClusterContext:
    return backend_context(state_dir, region=REGION, **spec)


async def launch(backend: AWSBackend, ctx: ClusterContext) -> list:
    ctx.state = await backend.ensure_network(ctx)
    scheduler = await backend.launch_scheduler(ctx)
    ctx.instances = [scheduler]
    return [scheduler, *await backend.launch_workers(ctx, ctx.spec.n_workers)]


async def stop(backend: AWSBackend, ctx: ClusterContext, launched: list) -> None:
    await backend.stop_instances(ctx, launched)
    await backend.cleanup(ctx)


def test_arm_disk_size_and_ssh_reach_ec2(tokyo, state_dir, proxy):
    ec2 = boto3.client("ec2", region_name=REGION)
    arm_image = ec2.describe_images(Filters=[{"Name": "architecture", "Values": ["arm64"]}])["Images"][0]["ImageId"]
    proxy.parameter(config.get("aws.images")["arm64"], arm_image)  # a public parameter moto lacks
    backend = AWSBackend(boto3.Session())
    ctx = context(state_dir, n_workers=2, arm=True, worker_disk_size="123 GiB", allow_ssh_from="198.51.100.0/24",
                  worker_options={"nthreads": 3}, worker_class="distributed.Worker")
    before = len(proxy.calls("CreateLaunchTemplate"))
    launched = asyncio.run(launch(backend, ctx))
    scheduler_template, worker_template = [c.params for c in proxy.calls("CreateLaunchTemplate")[before:]]

    # arm=True: Graviton types for every machine, booted from the arm64 image.
    assert {i.vm_type for i in launched} <= {*config.get("aws.arm-worker-vm-types"),
                                             config.get("aws.arm-scheduler-vm-type")}
    assert scheduler_template["LaunchTemplateData.ImageId"] == worker_template["LaunchTemplateData.ImageId"] \
        == arm_image
    # worker_disk_size: the workers' root device, at that size; the scheduler keeps the image's.
    assert worker_template["LaunchTemplateData.BlockDeviceMapping.1.Ebs.VolumeSize"] == "123"
    assert "LaunchTemplateData.BlockDeviceMapping.1.DeviceName" in worker_template
    assert not any(k.startswith("LaunchTemplateData.BlockDeviceMapping") for k in scheduler_template)
    # allow_ssh_from: one more group on every machine, opening 22 to that CIDR only.
    ssh = ctx.state["ssh_group"]
    [group] = ec2.describe_security_groups(GroupIds=[ssh])["SecurityGroups"]
    assert [(p["FromPort"], p["ToPort"], [r["CidrIp"] for r in p["IpRanges"]]) for p in group["IpPermissions"]] \
        == [(22, 22, ["198.51.100.0/24"])]
    for template in (scheduler_template, worker_template):
        groups = {v for k, v in template.items() if k.startswith("LaunchTemplateData.SecurityGroupId")}
        assert ssh in groups
    # worker_options and worker_class reach the workers' dask command.
    boot = user_data_config(worker_template["LaunchTemplateData.UserData"])
    assert boot["worker_options"] == {"nthreads": 3} and boot["nanny"] is False
    me = Identity("i-0", "10.0.0.9", REGION, sorted(tokyo)[0], "m7g.xlarge", False)
    command = dask_command(boot, me, Path("/opt/coiled-lab"))
    assert command[command.index("--nthreads") + 1] == "3" and "--no-nanny" in command
    asyncio.run(stop(backend, ctx, launched))

    # Without allow_ssh_from, no machine gets that group: SSH stays closed.
    plain = context(state_dir, n_workers=1)
    before = len(proxy.calls("CreateLaunchTemplate"))
    launched = asyncio.run(launch(backend, plain))
    for call in proxy.calls("CreateLaunchTemplate")[before:]:
        assert ssh not in {v for k, v in call.params.items() if k.startswith("LaunchTemplateData.SecurityGroupId")}
    asyncio.run(stop(backend, plain, launched))


def test_arm_and_scheduler_sizes_choose_types(tokyo):
    backend = AWSBackend(boto3.Session())
    spec = parse_spec(backend="aws", region=REGION, arm=True, scheduler_cpu=4, scheduler_memory="8 GiB")
    scheduler, workers = asyncio.run(backend.types.choose(spec, REGION))
    assert (scheduler.vcpu, scheduler.arch) == (4, "arm64") and scheduler.memory >= 8 * 2**30
    assert {t.arch for t in workers} == {"arm64"}
    mixed = parse_spec(backend="aws", region=REGION, arm=True, worker_vm_types=["m6i.xlarge"])
    with pytest.raises(ClusterSpecError) as refused:
        asyncio.run(backend.types.choose(mixed, REGION))
    assert refused.value.field == "worker_vm_types" and "m6i.xlarge" in refused.value.message


def test_use_best_zone_false_stays_in_the_first_zone(tokyo, state_dir, proxy):
    first, second = sorted(tokyo)[:2]
    proxy.insufficient_capacity({tokyo[first]})
    backend = AWSBackend(boto3.Session())
    best = context(state_dir, n_workers=1)  # use_best_zone is on by default: EC2 picks a zone with capacity
    launched = asyncio.run(launch(backend, best))
    assert {i.zone for i in launched} == {second}
    asyncio.run(stop(backend, best, launched))

    fixed = context(state_dir, n_workers=1, use_best_zone=False)
    fixed.state = asyncio.run(backend.ensure_network(fixed))
    with pytest.raises(AWSError, match="InsufficientInstanceCapacity"):
        asyncio.run(backend.launch_scheduler(fixed))
    asyncio.run(backend.cleanup(fixed))
