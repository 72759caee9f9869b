"""The default images of CPU machines are Debian 12's public SSM parameters, which moto
lacks: the proxy answers them with moto's own AMI of the same architecture in the asked
region, so the image lookup, DescribeImages and the root-disk lookup of pricing work."""

from __future__ import annotations

import asyncio

import boto3

from coiled_lab import config
from coiled_lab.backends.aws import AWSBackend
from coiled_lab.backends.aws.images import Images
from coiled_lab.backends.aws.session import AWSSession
from coiled_lab.spec import parse_spec

from .conftest import REGION
from .proxy import STAND_INS

DEBIAN = {"x86_64": "/aws/service/debian/release/12/latest/amd64",
          "arm64": "/aws/service/debian/release/12/latest/arm64"}


def test_the_default_cpu_images_are_debian_12():
    images = config.get("aws.images")
    assert {k: images[k] for k in DEBIAN} == DEBIAN
    assert "deeplearning" in images["gpu"]  # GPU machines keep the Deep Learning Base AMI
    assert set(DEBIAN.values()) == set(STAND_INS)


def test_debian_parameters_answer_moto_images_of_their_architecture(aws_env, proxy):
    for region in (REGION, "eu-west-1"):
        ssm = boto3.client("ssm", region_name=region)
        answer = ssm.get_parameters(Names=[*DEBIAN.values(), "/aws/service/no/such/parameter"])
        assert answer["InvalidParameters"] == ["/aws/service/no/such/parameter"]
        by_name = {p["Name"]: p["Value"] for p in answer["Parameters"]}
        assert set(by_name) == set(DEBIAN.values())
        assert all(p["ARN"].endswith(p["Name"]) for p in answer["Parameters"])
        one = ssm.get_parameter(Name=DEBIAN["arm64"])["Parameter"]
        assert (one["Name"], one["Value"]) == (DEBIAN["arm64"], by_name[DEBIAN["arm64"]])
        found = boto3.client("ec2", region_name=region).describe_images(ImageIds=list(by_name.values()))["Images"]
        arch = {i["ImageId"]: i["Architecture"] for i in found}
        assert {kind: arch[by_name[name]] for kind, name in DEBIAN.items()} == {"x86_64": "x86_64", "arm64": "arm64"}


def test_image_and_root_disk_lookups_work_with_them(aws_env, proxy):
    images = Images(AWSSession())
    x86, arm = (asyncio.run(images.image(REGION, kind)) for kind in ("x86_64", "arm64"))
    assert x86.startswith("ami-") and arm.startswith("ami-") and x86 != arm
    size, volume = asyncio.run(images.root_disk(REGION, "x86_64"))
    assert size > 0 and volume == "standard"  # what moto's images report (magnetic)
    inputs = asyncio.run(AWSBackend().price_inputs(parse_spec(backend="aws")))
    assert (inputs["volume_gb"], inputs["volume_type"]) == (size, volume)


def test_a_test_can_still_put_another_image_behind_a_debian_parameter(aws_env, proxy):
    proxy.parameter(DEBIAN["x86_64"], "ami-0b40ce0b00b40ce0b")
    answer = boto3.client("ssm", region_name=REGION).get_parameters(Names=list(DEBIAN.values()))
    by_name = {p["Name"]: p["Value"] for p in answer["Parameters"]}
    assert by_name[DEBIAN["x86_64"]] == "ami-0b40ce0b00b40ce0b" and by_name[DEBIAN["arm64"]].startswith("ami-")
