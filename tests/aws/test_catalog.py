"""Instance types and the choice of them, images, and the user-data a VM boots with."""

from __future__ import annotations

import asyncio
import json

import pytest

from coiled_lab.backends.aws import userdata
from coiled_lab.backends.aws.catalog import Catalog, InstanceType, matching
from coiled_lab.backends.aws.images import Images
from coiled_lab.backends.aws.session import AWSError, AWSSession
from coiled_lab.spec import ClusterSpecError, parse_spec
from coiled_lab.tls import TLSMaterial

from .conftest import REGION
from .unpack import unpack

GiB = 2**30


def kind(name: str, vcpu: int, memory: int, gpu: int = 0, maker: str | None = None, arch: str = "x86_64",
         burstable: bool = False, accelerated: bool = False) -> InstanceType:
    return InstanceType(name, vcpu, memory * GiB, gpu, maker, arch, True, burstable, accelerated or bool(gpu))


def test_matching_is_smallest_then_cheapest_and_never_pays_for_what_dask_cannot_use():
    types = [
        kind("m.2xlarge", 8, 32), kind("m.xlarge", 4, 16), kind("c.xlarge", 4, 8), kind("r.xlarge", 4, 32),
        kind("t.xlarge", 4, 16, burstable=True), kind("inf.xlarge", 4, 16, accelerated=True),
        kind("g.xlarge", 4, 16, gpu=1, maker="NVIDIA"), kind("ga.xlarge", 4, 16, gpu=1, maker="AMD"),
        kind("gg.xlarge", 4, 16, gpu=1, maker="NVIDIA", arch="arm64"), kind("n.xlarge", 4, 16),
    ]
    assert [t.name for t in matching(types, 4, 16 * GiB, None)] == ["m.xlarge", "n.xlarge", "r.xlarge", "m.2xlarge"]
    prices = {"n.xlarge": 0.05, "m.xlarge": 0.07}
    assert [t.name for t in matching(types, 4, 16 * GiB, None, prices)][:2] == ["n.xlarge", "m.xlarge"]
    assert [t.name for t in matching(types, None, 20 * GiB, None)] == ["r.xlarge", "m.2xlarge"]
    assert [t.name for t in matching(types, None, None, 1)] == ["g.xlarge"]  # NVIDIA on x86_64 only
    assert matching(types, 64, None, None) == []


def test_choice_of_types(aws_env):
    catalog = Catalog(AWSSession())

    def choose(**spec):
        scheduler, workers = asyncio.run(catalog.choose(parse_spec({"backend": "aws", **spec}), REGION))
        return scheduler, workers

    scheduler, workers = choose()
    assert scheduler.name == "m6i.large" and [t.name for t in workers] == ["m6i.xlarge", "m6a.xlarge", "m5.xlarge"]
    _, workers = choose(worker_vm_types=["m5.2xlarge", "m6i.2xlarge"], scheduler_vm_type="m5.large")
    assert [t.name for t in workers] == ["m5.2xlarge", "m6i.2xlarge"]  # the order given
    _, workers = choose(worker_cpu=8, worker_memory="30 GiB")
    assert 1 <= len(workers) <= 5
    assert all(t.vcpu >= 8 and t.memory >= 30 * GiB and not t.gpu and t.kind == workers[0].kind for t in workers)
    assert [t.vcpu for t in workers] == sorted(t.vcpu for t in workers)
    _, workers = choose(worker_gpu=1)
    assert workers and all(t.kind == "gpu" and t.gpu >= 1 for t in workers)
    _, workers = choose(worker_vm_types=["m6g.large", "m7g.large"])
    assert {t.kind for t in workers} == {"arm64"}

    with pytest.raises(ClusterSpecError) as info:
        choose(worker_vm_types=["m6g.large", "m6i.large"])
    assert info.value.field == "worker_vm_types" and "arm64 and x86_64" in str(info.value)
    with pytest.raises(ClusterSpecError) as info:
        choose(scheduler_vm_type="m9z.mega")
    assert info.value.field == "scheduler_vm_type" and "m9z.mega" in str(info.value)
    with pytest.raises(ClusterSpecError) as info:
        choose(worker_cpu=448, worker_gpu=16)  # no machine has both
    assert info.value.field == "worker_gpu"


def test_a_name_the_region_lacks_is_refused_without_asking_once_its_list_is_read(aws_env, proxy):
    catalog = Catalog(AWSSession())

    async def named(names):
        return [t.name for t in await catalog.named(REGION, names, "worker_vm_types")]

    async def scenario():
        with pytest.raises(ClusterSpecError, match="m9z.mega"):  # not listed yet: AWS is asked
            await named(["m9z.mega"])
        asked = len(proxy.calls("DescribeInstanceTypes"))
        assert asked >= 1
        await catalog.types(REGION)
        listed = len(proxy.calls("DescribeInstanceTypes"))
        with pytest.raises(ClusterSpecError, match="not an instance type of us-east-1") as info:
            await named(["m6i.large", "us-east-99"])
        assert info.value.field == "worker_vm_types"
        assert await named(["m5.large", "m6i.large"]) == ["m5.large", "m6i.large"]
        assert len(proxy.calls("DescribeInstanceTypes")) == listed  # both answered from the region's list

    asyncio.run(scenario())


def test_catalog_lists_sizes_zones_and_spot_prices(aws_env):
    catalog = asyncio.run(Catalog(AWSSession()).describe_region(REGION))
    assert catalog["regions"][0]["name"] == REGION and len(catalog["regions"][0]["zones"]) >= 3
    by_name = {t["name"]: t for t in catalog["instance_types"]}
    assert by_name["m6i.xlarge"]["vcpu"] == 4 and by_name["m6i.xlarge"]["memory"] == 16 * GiB
    assert by_name["g4dn.xlarge"]["gpu"] == 1 and by_name["g4dn.xlarge"]["gpu_maker"] == "NVIDIA"
    assert by_name["m6i.xlarge"]["zones"] and by_name["m6i.xlarge"]["spot_price_per_hour"] is not None


def test_images_come_from_public_parameters(aws_env, proxy):
    images = Images(AWSSession())
    assert asyncio.run(images.image(REGION, "x86_64")).startswith("ami-")
    assert asyncio.run(images.image(REGION, "arm64")).startswith("ami-")
    with pytest.raises(AWSError, match="no gpu image"):  # moto has no Deep Learning AMI parameter
        asyncio.run(images.image(REGION, "gpu"))
    with pytest.raises(AWSError, match="no nvidia-gpu-arm64 image"):
        asyncio.run(images.image(REGION, "nvidia-gpu-arm64"))


def test_user_data_carries_the_bootstrap_and_no_credentials(monkeypatch, tmp_path):
    spec = parse_spec({"backend": "aws", "idle_timeout": "5m", "environ": {"MY_SETTING": "1"}})
    tls = TLSMaterial.generate("c1")
    bootstrap = userdata.bootstrap_config("c1", spec, tls, "scheduler", software={
        "packages": ["dask==2026.8.0"], "packages_skipped": ["x 1: editable"]})
    script, files, modes = unpack(userdata.build(bootstrap))
    assert script.startswith("#!/bin/sh\n") and "trap 'shutdown -h now' EXIT" in script
    assert sorted(files) == ["coiled_lab/__init__.py", "coiled_lab/bootstrap/__init__.py",
                             "coiled_lab/bootstrap/envcache.py", "coiled_lab/bootstrap/lifetime.py", "coiled_lab/bootstrap/logship.py",
                             "coiled_lab/bootstrap/packages.py", "coiled_lab/bootstrap/utclog.py",
                             "coiled_lab/bootstrap/vm.py", "coiled_lab/bootstrap/watchdog.py", "config.json"]
    assert modes["config.json"] == 0o600
    config = json.loads(files["config.json"])
    assert config["tls"] == {"cert": tls.cert_pem, "key": tls.key_pem}
    assert config["environ"]["MY_SETTING"] == "1" and config["environ"]["COILED_LAB_IDLE_TIMEOUT"] == "300.0"
    assert "COILED_LAB_TELEMETRY" in config["environ"]
    assert config["packages"] == ["dask==2026.8.0"] and config["packages_skipped"] == ["x 1: editable"]
    everything = script.encode() + b"".join(files.values())
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY")
    assert b"wJalrXUtnFEMI" not in userdata.build(bootstrap) and b"AWS_SECRET" not in everything

    requirements = tmp_path / "requirements.txt"
    requirements.write_text("pandas==2.2.3\n")
    software = parse_spec({"backend": "aws", "software": str(requirements)})
    assert userdata.bootstrap_config("c1", software, tls, "worker")["requirements"] == "pandas==2.2.3\n"
    with pytest.raises(ClusterSpecError) as info:
        userdata.bootstrap_config("c1", parse_spec({"backend": "aws", "software": "ghcr.io/me/image:1"}), tls, "worker")
    assert info.value.field == "software"
    huge = {"packages": ["package-%d==1.0.%d" % (i, i * 7919 % 10007) for i in range(5000)]}
    with pytest.raises(ClusterSpecError, match="16 KiB"):  # (without an environment bucket: pins in user-data)
        userdata.build(userdata.bootstrap_config("c1", spec, tls, "worker", software=huge))
