"""What an EC2 cluster leaves in AWS carries no credential of the server's, and its network
is closed: the server's keys (recognisable markers) appear in no user-data, launch
template, tag, request body sent to AWS, CloudWatch line or ``/connection`` answer; the
cluster's security groups open nothing to 0.0.0.0/0 (or ::/0); the machines require
IMDSv2; every dask connection is TLS, and plain TCP is not answered."""

from __future__ import annotations

import json

import pytest
from distributed import Client

from coiled_lab import Cluster

from ..conftest import wait_for
from .unpack import user_data_text

pytestmark = pytest.mark.slow

KEY_ID = "AKIAMARKERH2SCAN0001"
SECRET = "secretMARKERh2scan/aa11bb22cc33dd44ee55ff66"
TOKEN = "tokenMARKERh2scan" + "Z" * 40
MARKERS = (KEY_ID, SECRET, TOKEN, "MARKERh2scan")


@pytest.fixture
def marked_credentials(aws_env, monkeypatch):
    """The server's keys for this test: fake, but recognisable wherever they might land."""
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", KEY_ID)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET)
    monkeypatch.setenv("AWS_SESSION_TOKEN", TOKEN)


def test_no_server_credential_reaches_aws_or_the_cluster_and_its_network_is_closed(
    marked_credentials, aws_control, emulator, proxy, moto, vm_network
):
    first_request = len(proxy.calls())
    with Cluster(n_workers=2, backend="aws", control=aws_control, timeout=120) as cluster:
        cid = cluster.cluster_id
        # The server really signed with the marked keys (so the scan below can see them).
        assert any(f"Credential={KEY_ID}/" in r.headers.get("Authorization", "") for r in proxy.calls()[first_request:])
        connection = aws_control.run(aws_control.connection(cid))
        assert connection["address"].startswith("tls://")

        with Client(cluster) as client:
            assert client.submit(sum, [1, 2]).result() == 3
            info = client.scheduler_info()
            addresses = [info["address"], *info["workers"]]
            assert len(addresses) == 3 and all(a.startswith("tls://") for a in addresses), addresses
        wait_for(lambda: len(moto.streams(f"{cid}/")) == 3, what="three log streams")
        # Plain TCP to the scheduler is not answered as dask: only TLS is.
        with pytest.raises((OSError, TimeoutError)):
            Client(connection["address"].replace("tls://", "tcp://"), timeout=3)

        ec2 = moto.client("ec2")
        instances = moto.instances(cid)
        assert len(instances) == 3
        user_data = {i["InstanceId"]: user_data_text(ec2.describe_instance_attribute(
            InstanceId=i["InstanceId"], Attribute="userData")["UserData"]["Value"]) for i in instances}
        tag = [{"Name": "tag:coiled-lab:cluster", "Values": [cid]}]
        # Launch templates live only while a launch needs them: read them as AWS received them.
        templates = [c.params for c in proxy.calls("CreateLaunchTemplate")
                     if c.params["LaunchTemplateName"].startswith(f"coiled-lab-{cid}-")]
        assert len(templates) >= 2  # the scheduler's and the workers'
        volumes = ec2.describe_volumes(Filters=tag)["Volumes"]
        group_ids = {v for t in templates for k, v in t.items() if "SecurityGroupId" in k or ".Groups." in k}
        groups = ec2.describe_security_groups(GroupIds=sorted(group_ids))["SecurityGroups"]
        logs = moto.client("logs")
        lines = [e["message"] for s in moto.streams(f"{cid}/") for e in logs.get_log_events(
            logGroupName="coiled-lab", logStreamName=s, startFromHead=True)["events"]]
        assert any("Scheduler at:" in line for line in lines)
        sent = [r.body.decode(errors="replace") for r in proxy.calls()[first_request:]]

        # IMDSv2 only, on every launch template.
        for template in templates:
            assert template["LaunchTemplateData.MetadataOptions.HttpTokens"] == "required", template
        # (moto does not copy a template's MetadataOptions onto fleet instances, as EC2
        # does; the emulated metadata service answers IMDSv2 only, as the template asks.)
        # Nothing open to the world: scheduler and dashboard ports to the server's address only.
        opened = [(p.get("FromPort"), p.get("ToPort"), r["CidrIp"]) for g in groups for p in g["IpPermissions"]
                  for r in p.get("IpRanges", [])]
        assert opened == [(8786, 8787, f"{vm_network.egress_address}/32")]  # the scheduler and dashboard, to this server only
        for group in groups:
            for permission in group["IpPermissions"]:
                assert not any(r["CidrIp"] == "0.0.0.0/0" for r in permission.get("IpRanges", [])), group
                assert not any(r["CidrIpv6"] == "::/0" for r in permission.get("Ipv6Ranges", [])), group

    scanned = {
        "user-data": json.dumps(user_data),
        "launch templates": json.dumps(templates) + "".join(user_data_text(t["LaunchTemplateData.UserData"]) for t in templates),
        "instance and volume tags": json.dumps([i.get("Tags") for i in instances] + [v.get("Tags") for v in volumes]),
        "CloudWatch lines": "\n".join(lines),
        "/connection": json.dumps(connection),
        "request bodies sent to AWS": "\n".join(sent),
    }
    assert all(scanned.values())
    for where, text in scanned.items():
        for marker in MARKERS:
            assert marker not in text, f"{marker!r} found in {where}"
    wait_for(lambda: not moto.tagged(cid), timeout=30, what=f"nothing tagged with {cid}")

