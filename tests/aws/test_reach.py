"""How this server reaches a cluster on the emulated network, with the defaults a new user
has (``connect_via: auto``, ``allow_ingress_from: me``): from outside the VPC over the
scheduler's public address, opened to the address the emulated internet's echo service
sees; a closed door is told within a minute; an address that cannot be learned refuses
the launch before anything exists."""

from __future__ import annotations

import time

import dask.config
import pytest

from coiled_lab.spec import ClusterSpecError

from ..conftest import wait_for

pytestmark = pytest.mark.slow


def test_outside_the_vpc_the_server_connects_over_the_public_address(aws_control, emulator, moto, vm_network):
    cluster = aws_control.run(aws_control.create({"backend": "aws", "n_workers": 0}))
    record = aws_control.run(aws_control.wait(cluster["id"], timeout=120))
    assert record["status"] == "running"
    scheduler = moto.instances(cluster["id"], "scheduler")[0]
    connection = aws_control.run(aws_control.connection(cluster["id"]))
    assert connection["address"] == f"tls://{scheduler['PublicIpAddress']}:8786"
    groups = moto.client("ec2").describe_security_groups(
        GroupIds=[g["GroupId"] for g in scheduler["SecurityGroups"]])["SecurityGroups"]
    opened = {r["CidrIp"] for g in groups for p in g["IpPermissions"] for r in p.get("IpRanges", [])}
    assert opened == {f"{vm_network.egress_address}/32"}  # what the echo saw: this server past the NAT
    aws_control.run(aws_control.stop(cluster["id"]))


def test_a_server_the_ingress_rule_leaves_out_is_told_within_a_minute(aws_control, emulator, moto):
    started = time.monotonic()
    cluster = aws_control.run(aws_control.create(
        {"backend": "aws", "n_workers": 1, "allow_ingress_from": "198.51.100.0/24"}))
    record = wait_for(lambda: (r := aws_control.run(aws_control.get(cluster["id"])))["status"] in ("error", "running")
                      and r, timeout=120, interval=0.5, what="the cluster to end its start")
    took = time.monotonic() - started
    assert record["status"] == "error", record
    assert "cannot reach the scheduler" in record["message"] and "198.51.100.0/24" in record["message"]
    assert "allow_ingress_from" in record["message"]
    assert took < 60, f"told after {took:.0f} s"  # start-timeout is 90 s here
    wait_for(lambda: not moto.instances(cluster["id"]), what="its machines to be stopped")


def test_me_that_cannot_be_learned_refuses_the_launch(aws_control, emulator, proxy):
    before = len(proxy.calls())
    with dask.config.set({"coiled-lab.address-echo": "http://127.0.0.1:9/"}):  # nothing listens there
        with pytest.raises(ClusterSpecError) as info:
            aws_control.run(aws_control.create({"backend": "aws", "n_workers": 1, "name": "no-address"}))
    assert info.value.field == "allow_ingress_from"
    assert "give allow_ingress_from as a CIDR" in info.value.message
    assert len(proxy.calls()) == before  # no cloud call
    assert not [c for c in aws_control.run(aws_control.list()) if c["name"] == "no-address"]


INSIDE = """
import json
from distributed import Client
from coiled_lab import Cluster
from coiled_lab.control.inprocess import InProcessControl
from coiled_lab.control.manager import ClusterManager

control = InProcessControl(ClusterManager())
with Cluster(n_workers=1, backend="aws", control=control, timeout=150) as cluster:
    with Client(cluster) as client:
        assert client.submit(lambda x: x + 1, 1).result() == 2
    state = control.manager.store.get_cluster(cluster.cluster_id).state
    print(json.dumps({"id": cluster.cluster_id, "address": cluster.scheduler_address,
                      "connect_via": state["connect_via"], "ingress": state["ingress_cidr"]}))
control.close()
"""


def test_inside_the_vpc_the_server_connects_privately(emulator, moto, proxy, network, vm_network, price_list,
                                                      tmp_path):
    """The control plane on a VM of the cluster's VPC (a JupyterHub on EC2): IMDS says which
    VPC it is in, so ``auto`` connects to the scheduler's private address, opened to this
    machine's private address only; no public address is involved."""
    import json
    import os
    import subprocess
    import sys
    from urllib.parse import urlparse

    ec2 = moto.client("ec2")
    image = ec2.describe_images(Owners=["amazon"])["Images"][0]["ImageId"]
    host = ec2.run_instances(ImageId=image, MinCount=1, MaxCount=1, InstanceType="t3.medium",
                             SubnetId=next(iter(network["subnets"].values())),
                             UserData="#!/bin/sh\nexec sleep 600\n")["Instances"][0]
    try:
        wait_for(lambda: host["InstanceId"] in emulator.running(), timeout=60, what="the server's VM")
        # AWS as this test process sees it (moto behind the proxy that answers what moto lacks).
        aws = vm_network.allow("127.0.0.1", urlparse(proxy.url).port, alias="aws.proxy")
        pricing = vm_network.allow("127.0.0.1", urlparse(price_list.url).port, alias="pricing.emulator")
        env = {k: v for k, v in os.environ.items() if k not in ("AWS_EC2_METADATA_DISABLED", "NO_PROXY", "no_proxy")}
        env.update(AWS_ENDPOINT_URL=f"http://{aws}", AWS_ENDPOINT_URL_PRICING=f"http://{pricing}",
                   http_proxy=vm_network.proxy_url, HTTP_PROXY=vm_network.proxy_url, no_proxy="127.0.0.1,localhost",
                   DASK_COILED_LAB__STATE_DIR=str(tmp_path / "state"))
        done = subprocess.run(["ip", "netns", "exec", vm_network.netns(host["InstanceId"]), sys.executable, "-c",
                               INSIDE], env=env, capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr[-3000:]
        seen = json.loads(done.stdout.strip().splitlines()[-1])
        scheduler = ec2.describe_instances(Filters=[
            {"Name": "tag:coiled-lab:cluster", "Values": [seen["id"]]},
            {"Name": "tag:coiled-lab:role", "Values": ["scheduler"]}])["Reservations"][0]["Instances"][0]
        assert seen["connect_via"] == "private"
        assert seen["address"] == f"tls://{scheduler['PrivateIpAddress']}:8786"
        assert seen["ingress"] == f"{host['PrivateIpAddress']}/32"  # this VM only, not the internet
    finally:
        ec2.terminate_instances(InstanceIds=[host["InstanceId"]])
