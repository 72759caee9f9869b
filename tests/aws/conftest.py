"""AWS without a cloud: a moto server, a fault-injecting proxy in front of it, and the EC2
emulator that boots moto's instances as bare VMs on the session's emulated network
(:mod:`tests.vm`).

boto3 reaches the proxy through ``AWS_ENDPOINT_URL`` with fake credentials (for the whole
package, and restored afterwards). ``coiled-lab setup aws --vpc-cidr 10.<n>.0.0/16``
prepares the network once (``<n>`` random, so that packages and concurrent runs do not
share addresses). The Jupyter server sits outside the VPC, as on a laptop: with the defaults
(``connect-via: auto``, ``allow-ingress-from: me``) it reaches a scheduler at its public
address, which the cluster's ingress group opens to the network's egress address only, as
the emulated address-echo service tells it. VMs install dask and distributed at
this environment's versions from the package index (``package-sync`` off) unless a test
turns package sync on.
"""

from __future__ import annotations

import base64
import datetime
import logging
import os
import random
import urllib.request
from typing import Any

import boto3
import dask.config
import pytest

from ..vm.fixtures import bare_rootfs, vm_network  # noqa: F401 - fixtures
from . import motofix
from .emulator import EC2Emulator
from .proxy import AWSProxy, Response

REGION = "us-east-1"
# What coiled-lab's defaults would be too slow for here: 2 shared cores, seconds not minutes.
TEST_CONFIG = {
    "coiled-lab.aws.nanny": False,
    "coiled-lab.aws.death-timeout": 15,
    "coiled-lab.aws.start-timeout": 90,
    "coiled-lab.aws.poll-interval": 0.5,
    "coiled-lab.aws.spot-poll-interval": 0.5,
    "coiled-lab.aws.region": REGION,
    # Syncing the test environment (jupyterlab, moto, playwright...) would install hundreds
    # of packages on every VM; the boot-path tests turn it on.
    "coiled-lab.cluster.package-sync": False,
    # Throttling bursts must not wait long between botocore's attempts.
    "coiled-lab.aws.max-attempts": 6,
}


def _env_name(key: str) -> str:
    return "DASK_" + key.upper().replace(".", "__").replace("-", "_")


@pytest.fixture(scope="package")
def moto_url(vm_network):
    from moto.server import ThreadedMotoServer

    motofix.apply(vm_network.public_address)  # EC2's behaviour where moto's differs

    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # one line per request otherwise
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    # moto keeps its accounts in this process's memory, shared by every server it runs: a
    # package that imports these fixtures (tests/chaos, tests/recovery/aws) starts from an
    # empty AWS, not with the VPC another package's `setup aws` made.
    urllib.request.urlopen(urllib.request.Request(f"http://{host}:{port}/moto-api/reset", method="POST"), timeout=30)
    yield f"http://{host}:{port}"
    server.stop()


@pytest.fixture(scope="package")
def proxy(moto_url):
    proxy = AWSProxy(moto_url).start()
    yield proxy
    proxy.close()


@pytest.fixture(scope="package")
def price_list():
    """moto has no Price List API: a local endpoint answers in its shape."""
    from ..pricelist import PriceList

    server = PriceList()
    yield server
    server.close()


@pytest.fixture(scope="package")
def aws_env(proxy, price_list, vm_network):
    """Fake credentials and the proxy's URL for boto3, test config for coiled-lab (also
    for subprocesses), for this package only."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("AWS_ENDPOINT_URL_PRICING", price_list.url)
        for key in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_SECURITY_TOKEN"):
            mp.delenv(key, raising=False)
        mp.setenv("AWS_ENDPOINT_URL", proxy.url)
        mp.setenv("AWS_ACCESS_KEY_ID", "AKIAFAKEFORTESTS0000")
        mp.setenv("AWS_SECRET_ACCESS_KEY", "fake-secret-for-tests")
        mp.setenv("AWS_DEFAULT_REGION", REGION)
        mp.setenv("AWS_CONFIG_FILE", os.devnull)
        mp.setenv("AWS_SHARED_CREDENTIALS_FILE", os.devnull)
        mp.setenv("AWS_EC2_METADATA_DISABLED", "true")  # this machine is no EC2 instance
        # "me" is the address the cloud sees this server's connections come from, as the
        # emulated internet's address-echo service tells it.
        config = {**TEST_CONFIG, "coiled-lab.address-echo": vm_network.echo_url}
        for key, value in config.items():
            mp.setenv(_env_name(key), str(value))
        with dask.config.set(config):
            yield


@pytest.fixture(scope="package")
def vpc_cidr() -> str:
    return f"10.{random.randint(200, 254)}.0.0/16"


@pytest.fixture(scope="package")
def network(aws_env, vpc_cidr) -> dict[str, Any]:
    """``coiled-lab setup aws`` run once; the subnet of each zone."""
    from coiled_lab.cli import main

    assert main(["setup", "aws", "--region", REGION, "--vpc-cidr", vpc_cidr]) == 0
    ec2 = boto3.client("ec2", region_name=REGION)
    vpc = ec2.describe_vpcs(Filters=[{"Name": "cidr", "Values": [vpc_cidr]}])["Vpcs"][0]["VpcId"]
    subnets = ec2.describe_subnets(Filters=[{"Name": "vpc-id", "Values": [vpc]}])["Subnets"]
    return {"vpc": vpc, "subnets": {s["AvailabilityZone"]: s["SubnetId"] for s in subnets}}


@pytest.fixture(scope="package")
def emulator(moto_url, proxy, network, vm_network, bare_rootfs, tmp_path_factory):
    emulator = EC2Emulator(moto_url, REGION, vm_network, bare_rootfs, tmp_path_factory.mktemp("ec2")).start()
    proxy.add(console_output(emulator))
    yield emulator
    emulator.close()


@pytest.fixture(autouse=True)
def _no_faults_left(request):
    """Faults a test injected at the proxy end with the test."""
    yield
    if "proxy" in request.fixturenames:
        request.getfixturevalue("proxy").reset()


@pytest.fixture
def aws_control(state_dir, emulator):
    """An in-process control plane on the test's state dir, launching into the emulator."""
    from coiled_lab.control.inprocess import InProcessControl
    from coiled_lab.control.manager import ClusterManager

    control = InProcessControl(ClusterManager(state_dir))
    yield control
    control.close()


def console_output(emulator: EC2Emulator):
    """Answer GetConsoleOutput with what the emulated machine printed (moto's is fixed text)."""

    def hook(request, forward):
        if request.action != "GetConsoleOutput":
            return None
        text = emulator.console(request.params.get("InstanceId", ""))
        if text is None:
            return None
        now = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.000Z")
        body = (f'<?xml version="1.0" encoding="UTF-8"?><GetConsoleOutputResponse '
                f'xmlns="http://ec2.amazonaws.com/doc/2016-11-15/"><requestId>emulator</requestId>'
                f"<instanceId>{request.params['InstanceId']}</instanceId><timestamp>{now}</timestamp>"
                f"<output>{base64.b64encode(text.encode()).decode()}</output></GetConsoleOutputResponse>")
        return Response(200, body.encode(), {"Content-Type": "text/xml"})

    hook.permanent = True  # type: ignore[attr-defined]
    return hook


class Moto:
    """Looking at moto directly, past the proxy (so no injected fault reaches the test)."""

    def __init__(self, url: str):
        self.url = url

    def client(self, service: str, region: str = REGION):
        return boto3.client(service, region_name=region, endpoint_url=self.url)

    def instances(self, cluster_id: str, role: str | None = None, region: str = REGION) -> list[dict]:
        """The cluster's pending or running instances."""
        filters = [{"Name": "tag:coiled-lab:cluster", "Values": [cluster_id]},
                   {"Name": "instance-state-name", "Values": ["pending", "running"]}]
        if role:
            filters.append({"Name": "tag:coiled-lab:role", "Values": [role]})
        pages = self.client("ec2", region).describe_instances(Filters=filters)["Reservations"]
        return [i for r in pages for i in r["Instances"]]

    def all_instances(self, cluster_id: str, region: str = REGION) -> list[str]:
        """Every instance ever launched with this cluster's tag, terminated ones included."""
        tag = [{"Name": "tag:coiled-lab:cluster", "Values": [cluster_id]}]
        pages = self.client("ec2", region).describe_instances(Filters=tag)["Reservations"]
        return [i["InstanceId"] for r in pages for i in r["Instances"]]

    def tagged(self, cluster_id: str, region: str = REGION) -> dict[str, list[str]]:
        """What still exists with this cluster's tag (terminated instances do not count), and
        network interfaces still attached to any of its instances."""
        ec2 = self.client("ec2", region)
        tag = [{"Name": "tag:coiled-lab:cluster", "Values": [cluster_id]}]
        listed = [i for r in ec2.describe_instances(Filters=tag)["Reservations"] for i in r["Instances"]]
        instances = [i["InstanceId"] for i in listed if i["State"]["Name"] not in ("terminated", "shutting-down")]
        templates = [t["LaunchTemplateId"] for t in ec2.describe_launch_templates(Filters=tag)["LaunchTemplates"]]
        volumes = [v["VolumeId"] for v in ec2.describe_volumes(Filters=tag)["Volumes"]]
        enis = {n["NetworkInterfaceId"] for n in ec2.describe_network_interfaces(Filters=tag)["NetworkInterfaces"]}
        if listed:
            attached = [{"Name": "attachment.instance-id", "Values": [i["InstanceId"] for i in listed]}]
            enis |= {n["NetworkInterfaceId"]
                     for n in ec2.describe_network_interfaces(Filters=attached)["NetworkInterfaces"]}
        found = {"instances": instances, "launch_templates": templates, "volumes": volumes,
                 "network_interfaces": sorted(enis)}
        return {k: v for k, v in found.items() if v}

    def streams(self, prefix: str, region: str = REGION) -> list[str]:
        answer = self.client("logs", region).describe_log_streams(logGroupName="coiled-lab", logStreamNamePrefix=prefix)
        return sorted(s["logStreamName"] for s in answer["logStreams"])


@pytest.fixture(scope="package")
def moto(moto_url) -> Moto:
    return Moto(moto_url)
