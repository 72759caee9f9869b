"""An "EC2" cluster end to end: launched through the manager into moto, booted by the EC2
emulator, reached over TLS, logging to moto's CloudWatch, scaled, interrupted, stopped."""

from __future__ import annotations

import base64
import gzip
import ipaddress
import socket
import time

import pytest
from distributed import Client

from coiled_lab import Cluster
from coiled_lab.tls import TLSMaterial

from ..conftest import wait_for

pytestmark = pytest.mark.slow


def test_cluster_on_ec2(aws_control, emulator, proxy, moto, vpc_cidr):
    fleets_before = len(proxy.calls("CreateFleet"))
    with Cluster(n_workers=2, backend="aws", control=aws_control, timeout=180) as cluster:
        cluster_id = cluster.cluster_id
        scheduler = moto.instances(cluster_id, "scheduler")[0]
        # This server is outside the VPC: it reaches the scheduler at its public address,
        # and its private one (where the workers reach it) not at all.
        assert cluster.scheduler_address == f"tls://{scheduler['PublicIpAddress']}:8786"
        assert ipaddress.ip_address(scheduler["PrivateIpAddress"]) in ipaddress.ip_network(vpc_cidr)
        with pytest.raises(OSError):
            socket.create_connection((scheduler["PrivateIpAddress"], 8786), timeout=2).close()
        workers = moto.instances(cluster_id, "worker")
        assert len(workers) == 2
        assert {w["Placement"]["AvailabilityZone"] for w in workers} == {scheduler["Placement"]["AvailabilityZone"]}

        with Client(cluster) as client:
            assert client.submit(lambda x: x * 2, 21).result() == 42
            # The workers are named after their instances: that is how the manager matches them.
            names = {w["name"] for w in client.scheduler_info()["workers"].values()}
            assert names == {w["InstanceId"] for w in workers}

            cluster.scale(3)
            client.wait_for_workers(3, timeout=60)
            wait_for(lambda: len(moto.instances(cluster_id, "worker")) == 3, what="3 worker instances")
            cluster.scale(1)
            wait_for(lambda: len(client.scheduler_info()["workers"]) == 1, timeout=60, what="1 worker")
            wait_for(lambda: len(moto.instances(cluster_id, "worker")) == 1, what="1 worker instance")
            assert client.submit(lambda: 1).result() == 1

        # Only the cluster's own certificate opens it.
        with pytest.raises((OSError, TimeoutError)):
            Client(cluster.scheduler_address, security=TLSMaterial.generate("other").security(), timeout=3)

        # Every VM ships its log to its own stream; logs() reads them all in one request.
        streams = moto.streams(f"{cluster_id}/")
        assert f"{cluster_id}/scheduler-{scheduler['InstanceId']}" in streams
        assert {f"{cluster_id}/worker-{w['InstanceId']}" for w in workers} <= set(streams)
        before = len(proxy.calls("FilterLogEvents"))
        records = aws_control.run(aws_control.logs(cluster_id, limit=None))
        assert len(proxy.calls("FilterLogEvents")) == before + 1
        assert {"scheduler", "worker"} <= {r["role"] for r in records}
        assert any("Scheduler at:" in r["message"] for r in records)
        assert [r["time"] for r in records] == sorted(r["time"] for r in records)

    assert cluster.record["status"] == "stopped"
    wait_for(lambda: not moto.tagged(cluster_id), timeout=30, what=f"nothing tagged with {cluster_id}")
    wait_for(lambda: not [m for m in emulator.running() if m in {w["InstanceId"] for w in workers}],
             what="the emulated machines to end")

    # One fleet request per launch: the scheduler, the first two workers, the third.
    fleets = proxy.calls("CreateFleet")[fleets_before:]
    assert [int(c.params["TargetCapacitySpecification.TotalTargetCapacity"]) for c in fleets] == [1, 2, 1]
    assert not proxy.calls("RunInstances")


def test_launch_template_is_locked_down_and_carries_no_credentials(aws_control, emulator, proxy, moto):
    cluster = aws_control.run(aws_control.create({"backend": "aws", "n_workers": 1}))
    aws_control.run(aws_control.wait(cluster["id"], timeout=120))
    templates = [c.params for c in proxy.calls("CreateLaunchTemplate")
                 if c.params["LaunchTemplateName"].startswith(f"coiled-lab-{cluster['id']}-")]
    assert len(templates) == 2  # the scheduler's and the workers'
    for data in templates:
        assert data["LaunchTemplateData.MetadataOptions.HttpTokens"] == "required"
        assert data["LaunchTemplateData.InstanceInitiatedShutdownBehavior"] == "terminate"
        assert data["LaunchTemplateData.IamInstanceProfile.Name"] == "coiled-lab-instance"
        kinds = {v for k, v in data.items() if k.startswith("LaunchTemplateData.TagSpecification.")
                 and k.endswith(".ResourceType")}
        assert kinds == {"instance", "volume"}
        script = gzip.decompress(base64.b64decode(data["LaunchTemplateData.UserData"]))
        assert len(gzip.compress(script)) <= 16 * 1024
        for secret in ("AKIAFAKEFORTESTS0000", "fake-secret-for-tests", "AWS_SECRET", "AWS_ACCESS_KEY"):
            assert secret.encode() not in script
    # Nothing but the instances (their volumes and network interfaces) is left between launches.
    assert moto.tagged(cluster["id"]).keys() == {"instances", "volumes", "network_interfaces"}
    aws_control.run(aws_control.stop(cluster["id"]))
    aws_control.run(aws_control.wait(cluster["id"], ("stopped",), 60))
    wait_for(lambda: not moto.tagged(cluster["id"]), timeout=30, what="nothing tagged")


def test_spot_interruption_retires_the_worker_and_it_is_replaced(aws_control, emulator, moto):
    cluster = aws_control.run(aws_control.create({"backend": "aws", "n_workers": 2, "spot_policy": "spot"}))
    running = aws_control.run(aws_control.wait(cluster["id"], timeout=120))
    assert running["status"] == "running"
    workers = moto.instances(cluster["id"], "worker")
    assert all(w.get("InstanceLifecycle") == "spot" for w in workers)
    victim = workers[0]["InstanceId"]
    with Cluster(name=cluster["name"], control=aws_control, shutdown_on_close=False) as attached, \
            Client(attached) as client:
        addresses = {w["name"]: a for a, w in client.scheduler_info()["workers"].items()}
        data = client.submit(lambda: list(range(1000)), workers=[addresses[victim]], pure=False)
        assert len(data.result()) == 1000

        emulator.interrupt(victim)
        # Retired gracefully: its data moved to the other worker before it left.
        wait_for(lambda: victim not in {w["name"] for w in client.scheduler_info()["workers"].values()},
                 timeout=60, what="the interrupted worker to leave")
        assert len(data.result()) == 1000
        assert data.key in {k for keys in client.has_what().values() for k in keys}
        # The manager replaces it.
        client.wait_for_workers(2, timeout=90)
    replacement = {w["InstanceId"] for w in moto.instances(cluster["id"], "worker")} - {w["InstanceId"] for w in workers}
    assert len(replacement) == 1
    records = aws_control.run(aws_control.logs(cluster["id"], instance=victim, limit=None))
    assert any("spot interruption notice" in r["message"] for r in records)
    aws_control.run(aws_control.stop(cluster["id"]))
    aws_control.run(aws_control.wait(cluster["id"], ("stopped",), 60))
    wait_for(lambda: not moto.tagged(cluster["id"]), timeout=30, what="nothing tagged")


def test_idle_cluster_stops_itself_and_says_why(aws_control, emulator, moto):
    cluster = aws_control.run(aws_control.create(
        {"backend": "aws", "n_workers": 1, "idle_timeout": 3, "no_client_timeout": "off"}))
    aws_control.run(aws_control.wait(cluster["id"], timeout=120))
    final = aws_control.run(aws_control.wait(cluster["id"], ("stopped",), 90))
    # The reason reached CloudWatch before the scheduler's VM went away.
    assert final["status"] == "stopped" and "idle_timeout of 3s" in final["message"]
    wait_for(lambda: not moto.tagged(cluster["id"]), timeout=30, what="nothing tagged")
    assert time.time() - final["stopped_at"] < 60
