"""``coiled-lab setup aws``: a dry run changes nothing, a run prepares everything once, a
second run changes nothing, nothing is opened to the world, and the policies are printed."""

from __future__ import annotations

import json
import random

import pytest

from coiled_lab.backends.aws.network import ingress_group_name
from coiled_lab.cli import main

REGION = "eu-west-1"  # apart from the region the cluster tests use


def managed(client, call: str, key: str, **params) -> list[dict]:
    params.setdefault("Filters", []).append({"Name": "tag:coiled-lab:managed", "Values": ["true"]})
    return getattr(client, call)(**params)[key]


def policies(output: str) -> list[dict]:
    """The JSON documents printed after the plan."""
    decoder, found, i = json.JSONDecoder(), [], output.find("{")
    while i != -1:
        document, end = decoder.raw_decode(output, i)
        found.append(document)
        i = output.find("{", end)
    return found


def test_setup_is_a_dry_run_then_a_change_then_nothing(aws_env, moto, capsys, vm_network):
    ec2 = moto.client("ec2", REGION)
    cidr = f"127.{random.randint(32, 250)}.0.0/16"
    zones = sorted(z["ZoneName"] for z in ec2.describe_availability_zones()["AvailabilityZones"])

    assert main(["setup", "aws", "--region", REGION, "--vpc-cidr", cidr, "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert f"would create VPC {cidr}" in out and "nothing was changed" in out
    assert out.count("would create subnet") == len(zones)
    assert not managed(ec2, "describe_vpcs", "Vpcs")

    assert main(["setup", "aws", "--region", REGION, "--vpc-cidr", cidr]) == 0
    out = capsys.readouterr().out
    assert "done:" in out
    setup_policy, everyday_policy = policies(out)
    setup_actions = {a for s in setup_policy["Statement"] for a in _list(s["Action"])}
    everyday_actions = {a for s in everyday_policy["Statement"] for a in _list(s["Action"])}
    assert {"ec2:CreateVpc", "iam:CreateRole", "logs:CreateLogGroup"} <= setup_actions
    assert {"ec2:CreateFleet", "ec2:TerminateInstances", "logs:FilterLogEvents"} <= everyday_actions
    assert not {"ec2:CreateVpc", "iam:CreateRole", "iam:PutRolePolicy"} & everyday_actions

    assert main(["setup", "aws", "--region", REGION, "--vpc-cidr", cidr]) == 0
    assert "nothing to change" in capsys.readouterr().out

    [vpc] = managed(ec2, "describe_vpcs", "Vpcs")
    assert vpc["CidrBlock"] == cidr
    vpc_filter = [{"Name": "vpc-id", "Values": [vpc["VpcId"]]}]
    subnets = managed(ec2, "describe_subnets", "Subnets", Filters=list(vpc_filter))
    assert sorted(s["AvailabilityZone"] for s in subnets) == zones
    assert all(s["MapPublicIpOnLaunch"] for s in subnets)
    [gateway] = ec2.describe_internet_gateways(
        Filters=[{"Name": "attachment.vpc-id", "Values": [vpc["VpcId"]]}])["InternetGateways"]
    [table] = managed(ec2, "describe_route_tables", "RouteTables", Filters=list(vpc_filter))
    assert {"DestinationCidrBlock": "0.0.0.0/0", "GatewayId": gateway["InternetGatewayId"]}.items() <= \
        next(r for r in table["Routes"] if r.get("DestinationCidrBlock") == "0.0.0.0/0").items()
    assert {a["SubnetId"] for a in table["Associations"] if a.get("SubnetId")} == {s["SubnetId"] for s in subnets}

    groups = {g["GroupName"]: g for g in managed(ec2, "describe_security_groups", "SecurityGroups",
                                                 Filters=list(vpc_filter))}
    me = f"{vm_network.egress_address}/32"  # "me": this server as the emulated internet's echo sees it
    assert set(groups) == {"coiled-lab-cluster", ingress_group_name(me)}
    cluster_group = groups["coiled-lab-cluster"]
    assert [p["UserIdGroupPairs"][0]["GroupId"] for p in cluster_group["IpPermissions"]] == [cluster_group["GroupId"]]
    [rule] = groups[ingress_group_name(me)]["IpPermissions"]
    assert (rule["FromPort"], rule["ToPort"]) == (8786, 8787)
    assert [r["CidrIp"] for r in rule["IpRanges"]] == [me]
    for group in groups.values():  # nothing open to the world
        assert not any(r["CidrIp"] == "0.0.0.0/0" for p in group["IpPermissions"] for r in p.get("IpRanges", []))

    iam = moto.client("iam", REGION)
    role = iam.get_role(RoleName="coiled-lab-instance")["Role"]
    assert role["AssumeRolePolicyDocument"]["Statement"][0]["Principal"] == {"Service": "ec2.amazonaws.com"}
    inline = iam.get_role_policy(RoleName="coiled-lab-instance", PolicyName="coiled-lab-logs")["PolicyDocument"]
    bucket = f"coiled-lab-envs-{moto.client('sts', REGION).get_caller_identity()['Account']}-{REGION}"
    assert {s["Sid"]: (s["Action"], s["Resource"]) for s in inline["Statement"]} == {
        "CreateLogStreams": ("logs:CreateLogStream", "arn:aws:logs:*:*:log-group:coiled-lab:*"),
        "WriteLogStreams": ("logs:PutLogEvents", "arn:aws:logs:*:*:log-group:coiled-lab:log-stream:*"),
        # the VMs read environments' inputs and archives and upload the archive they built; nothing else
        "ReadEnvironments": ("s3:GetObject", [f"arn:aws:s3:::{bucket[:-len(REGION)]}*/envs/*",
                                              f"arn:aws:s3:::{bucket[:-len(REGION)]}*/inputs/*"]),
        "UploadBuiltEnvironments": ("s3:PutObject", f"arn:aws:s3:::{bucket[:-len(REGION)]}*/envs/*")}
    assert iam.get_instance_profile(InstanceProfileName="coiled-lab-instance")["InstanceProfile"]["Roles"]
    [group] = moto.client("logs", REGION).describe_log_groups(logGroupNamePrefix="coiled-lab")["logGroups"]
    assert group["retentionInDays"] == 30

    s3 = moto.client("s3", REGION)  # the bucket of built environments: private, archives expire
    [rule] = s3.get_bucket_lifecycle_configuration(Bucket=bucket)["Rules"]
    assert (rule["Status"], rule["Expiration"]["Days"]) == ("Enabled", 30)
    assert all(s3.get_public_access_block(Bucket=bucket)["PublicAccessBlockConfiguration"].values())
    assert {"s3:CreateBucket", "s3:PutLifecycleConfiguration"} <= setup_actions
    assert "s3:CreateBucket" not in everyday_actions


def test_setup_prepares_an_existing_vpc_and_keeps_its_gateway(aws_env, moto, capsys):
    region = "eu-west-2"
    ec2 = moto.client("ec2", region)
    vpc = ec2.create_vpc(CidrBlock=f"127.{random.randint(32, 250)}.0.0/16")["Vpc"]["VpcId"]
    gateway = ec2.create_internet_gateway()["InternetGateway"]["InternetGatewayId"]
    ec2.attach_internet_gateway(InternetGatewayId=gateway, VpcId=vpc)
    zone = ec2.describe_availability_zones()["AvailabilityZones"][0]["ZoneName"]
    theirs = ec2.create_subnet(VpcId=vpc, CidrBlock=ec2.describe_vpcs(VpcIds=[vpc])["Vpcs"][0]["CidrBlock"]
                               .replace(".0.0/16", ".0.0/20"), AvailabilityZone=zone)["Subnet"]

    assert main(["setup", "aws", "--region", region, "--vpc-id", vpc]) == 0
    out = capsys.readouterr().out
    assert "  create VPC" not in out and "create an internet gateway" not in out
    ours = managed(ec2, "describe_subnets", "Subnets", Filters=[{"Name": "vpc-id", "Values": [vpc]}])
    assert theirs["SubnetId"] not in {s["SubnetId"] for s in ours}
    assert not any(s["CidrBlock"] == theirs["CidrBlock"] for s in ours)  # no overlap with what was there
    assert main(["setup", "aws", "--region", region, "--vpc-id", vpc]) == 0
    assert "nothing to change" in capsys.readouterr().out


def test_setup_names_a_missing_vpc(aws_env, capsys):
    assert main(["setup", "aws", "--region", REGION, "--vpc-id", "vpc-0000000000000000"]) == 3  # EXIT_CONFLICT
    assert "--vpc-id" in capsys.readouterr().err


def test_a_cluster_without_setup_is_told_to_run_it(aws_env, state_dir):
    from coiled_lab.control.inprocess import InProcessControl
    from coiled_lab.control.manager import ClusterManager

    control = InProcessControl(ClusterManager(state_dir))
    try:
        cluster = control.run(control.create({"backend": "aws", "region": "ap-south-1", "n_workers": 1}))
        final = control.run(control.wait(cluster["id"], ("stopped",), 60))
        assert final["status"] == "error"
        assert "coiled-lab setup aws --region ap-south-1" in final["message"]
    finally:
        control.close()


def _list(value) -> list:
    return value if isinstance(value, list) else [value]


@pytest.fixture(autouse=True)
def _quiet_manager_retries():
    """A cluster that cannot start fails after the configured attempts; fewer here."""
    import dask.config

    with dask.config.set({"coiled-lab.manager.max-retries": 2}):
        yield
