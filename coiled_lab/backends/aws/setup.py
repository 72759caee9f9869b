"""``coiled-lab setup aws``: prepare an account and region once, idempotently.

It reads what exists first and turns the difference into a list of :class:`Change`\\ s;
``--dry-run`` prints them, otherwise they are applied in order (a change may use an id an
earlier one created). A second run finds everything in place and says so. Everything is
tagged ``coiled-lab:managed=true``:

- a VPC (or the one given with ``--vpc-id``), one subnet per availability zone with
  public addresses (VMs install packages and reach CloudWatch), an internet gateway and a
  route table sending outbound traffic through it;
- a security group letting members of a cluster reach each other, and one opening the
  scheduler and dashboard ports to ``allow_ingress_from`` only (default: this server);
- the VMs' IAM role and instance profile (write log streams in the log group, read
  environment inputs and archives and upload archives, nothing else: :mod:`.iam`);
- the CloudWatch log group, with its retention (30 days by default);
- the S3 bucket of built environments, private, its objects removed after
  ``env-expire-days`` (counted from the upload: an environment in use longer than that is
  built again by the next cluster).
"""

from __future__ import annotations

import ipaddress
import json
from typing import Any, Awaitable, Callable, Optional

from ... import config
from ..ingress import reach
from ..plan import Plan
from . import iam
from .envstore import bucket_name
from .network import create_ingress_group, ingress_group_name
from .session import AWSError, AWSSession, error_code
from .tags import INGRESS, MANAGED, PURPOSE, as_dict, managed, tag_filter, tag_list, tag_specs

NAME = "coiled-lab"
# The IAM policies `setup aws` prints (`--policy` one alone), and what each is for.
POLICIES = {"setup": "running `coiled-lab setup aws` (detach it once setup is done)",
            "everyday": "everyday use (starting, watching and stopping clusters)"}


async def plan(
    aws: AWSSession,
    region: str,
    vpc_id: Optional[str] = None,
    vpc_cidr: Optional[str] = None,
    allow_ingress_from: Optional[str] = None,
) -> Plan:
    """Read what exists (changing nothing) and list what setup would change."""
    p = Plan(region)
    vpc = await _find_vpc(aws, region, vpc_id, vpc_cidr)
    if vpc:
        p.ids["vpc"], cidr = vpc["VpcId"], vpc["CidrBlock"]
    else:
        cidr = str(ipaddress.ip_network(vpc_cidr or config.get("aws.vpc-cidr")))

        async def create_vpc() -> None:
            made = await aws.call("ec2", region, "create_vpc", CidrBlock=cidr,
                                  TagSpecifications=tag_specs(["vpc"], managed(NAME)))
            p.ids["vpc"] = made["Vpc"]["VpcId"]

        p.add(f"create VPC {cidr}", create_vpc)
    new_subnets = await _plan_subnets(aws, p, cidr, existing=bool(vpc))
    await _plan_routes(aws, p, existing=bool(vpc), new_subnets=new_subnets)
    source = allow_ingress_from or config.get("cluster.allow-ingress-from")
    _, open_to = await reach(config.get("cluster.connect-via"), source, "aws", p.ids.get("vpc", ""),
                             aws.endpoint("ec2", region), AWSError)
    await _plan_security_groups(aws, p, open_to, existing=bool(vpc))
    p.ids["buckets"] = await buckets_pattern(aws, region)
    await _plan_role(aws, p)
    await _plan_log_group(aws, p)
    await _plan_bucket(aws, p, *(await bucket_name(aws, region)))
    return p


async def run(
    aws: AWSSession,
    region: str,
    emit: Callable[[str], None],
    vpc_id: Optional[str] = None,
    vpc_cidr: Optional[str] = None,
    allow_ingress_from: Optional[str] = None,
    dry_run: bool = False,
) -> Plan:
    """Plan, print, apply (unless ``dry_run``), then print the IAM policies to attach."""
    p = await plan(aws, region, vpc_id, vpc_cidr, allow_ingress_from)
    emit(f"coiled-lab setup aws: region {region}")
    await p.carry_out(emit, dry_run)
    for which, what in POLICIES.items():
        emit(f"\nIAM policy for {what}:")
        emit(json.dumps(await policy(aws, region, which, p.ids["buckets"]), indent=2))
    return p


async def policy(aws: AWSSession, region: str, which: str, buckets: Optional[str] = None) -> dict[str, Any]:
    """The IAM policy ``which`` ("setup" or "everyday") exactly as `setup aws` prints it
    (``buckets``: :func:`buckets_pattern`, asked for when not given)."""
    make = {"setup": iam.setup_policy, "everyday": iam.everyday_policy}[which]
    return make(config.get("aws.instance-profile"), config.get("aws.log-group"),
                buckets or await buckets_pattern(aws, region))


# -- VPC, subnets, routes ----------------------------------------------------------------
async def _find_vpc(aws: AWSSession, region: str, vpc_id: Optional[str], cidr: Optional[str]) -> Optional[dict]:
    if vpc_id:
        try:
            return (await aws.call("ec2", region, "describe_vpcs", VpcIds=[vpc_id]))["Vpcs"][0]
        except Exception as exc:
            if error_code(exc) == "InvalidVpcID.NotFound":
                raise AWSError(f"--vpc-id: {vpc_id!r} is not a VPC in {region}") from None
            raise
    filters = [tag_filter(MANAGED, "true")] + ([{"Name": "cidr", "Values": [cidr]}] if cidr else [])
    vpcs = (await aws.call("ec2", region, "describe_vpcs", Filters=filters))["Vpcs"]
    if len(vpcs) > 1:
        raise AWSError(f"coiled-lab manages several VPCs in {region} "
                       f"({', '.join(v['VpcId'] for v in vpcs)}); name one with --vpc-id")
    return vpcs[0] if vpcs else None


async def _plan_subnets(aws: AWSSession, p: Plan, cidr: str, existing: bool) -> int:
    """Plan a subnet in each zone that has none yet; return how many."""
    region = p.region
    zones = (await aws.call("ec2", region, "describe_availability_zones", Filters=[
        {"Name": "state", "Values": ["available"]}, {"Name": "zone-type", "Values": ["availability-zone"]}]))
    names = sorted(z["ZoneName"] for z in zones["AvailabilityZones"])
    subnets = []
    if existing:
        subnets = await aws.pages("ec2", region, "describe_subnets", "Subnets",
                                  Filters=[{"Name": "vpc-id", "Values": [p.ids["vpc"]]}])
    p.ids["subnets"] = {s["AvailabilityZone"]: s["SubnetId"] for s in subnets
                        if as_dict(s.get("Tags")).get(MANAGED) == "true"}
    taken = [ipaddress.ip_network(s["CidrBlock"]) for s in subnets]
    network = ipaddress.ip_network(cidr)
    free = (b for b in network.subnets(new_prefix=min(network.prefixlen + 4, 28))
            if not any(b.overlaps(t) for t in taken))
    missing = [zone for zone in names if zone not in p.ids["subnets"]]
    for zone in missing:
        block = next(free, None)
        if block is None:
            raise AWSError(f"no free address block left in {cidr} for a subnet in {zone}")

        async def create_subnet(zone: str = zone, block: str = str(block)) -> None:
            made = await aws.call("ec2", region, "create_subnet", VpcId=p.ids["vpc"], CidrBlock=block,
                                  AvailabilityZone=zone,
                                  TagSpecifications=tag_specs(["subnet"], managed(f"{NAME}-{zone}")))
            subnet = made["Subnet"]["SubnetId"]
            await aws.call("ec2", region, "modify_subnet_attribute", SubnetId=subnet,
                           MapPublicIpOnLaunch={"Value": True})
            p.ids["subnets"][zone] = subnet

        p.add(f"create subnet {block} in {zone}", create_subnet)
    return len(missing)


async def _plan_routes(aws: AWSSession, p: Plan, existing: bool, new_subnets: int) -> None:
    region = p.region
    gateways, tables = [], []
    if existing:
        vpc_filter = {"Name": "vpc-id", "Values": [p.ids["vpc"]]}
        gateways = (await aws.call("ec2", region, "describe_internet_gateways", Filters=[
            {"Name": "attachment.vpc-id", "Values": [p.ids["vpc"]]}]))["InternetGateways"]
        tables = (await aws.call("ec2", region, "describe_route_tables",
                                 Filters=[vpc_filter, tag_filter(MANAGED, "true")]))["RouteTables"]
    if gateways:
        p.ids["igw"] = gateways[0]["InternetGatewayId"]
    else:
        async def create_gateway() -> None:
            made = await aws.call("ec2", region, "create_internet_gateway",
                                  TagSpecifications=tag_specs(["internet-gateway"], managed(NAME)))
            p.ids["igw"] = made["InternetGateway"]["InternetGatewayId"]
            await aws.call("ec2", region, "attach_internet_gateway", InternetGatewayId=p.ids["igw"],
                           VpcId=p.ids["vpc"])

        p.add("create an internet gateway and attach it to the VPC", create_gateway)

    associated: set[str] = set()
    if tables:
        table = tables[0]
        p.ids["route_table"] = table["RouteTableId"]
        associated = {a.get("SubnetId") for a in table.get("Associations", [])}
        if not any(r.get("DestinationCidrBlock") == "0.0.0.0/0" for r in table.get("Routes", [])):
            p.add("add the outbound route to the internet gateway", lambda: _default_route(aws, p))
    else:
        async def create_table() -> None:
            made = await aws.call("ec2", region, "create_route_table", VpcId=p.ids["vpc"],
                                  TagSpecifications=tag_specs(["route-table"], managed(NAME)))
            p.ids["route_table"] = made["RouteTable"]["RouteTableId"]
            await _default_route(aws, p)

        p.add("create a route table with an outbound route to the internet gateway", create_table)

    async def associate() -> None:
        for subnet in sorted(set(p.ids["subnets"].values()) - associated):
            await aws.call("ec2", region, "associate_route_table", RouteTableId=p.ids["route_table"], SubnetId=subnet)

    unassociated = set(p.ids["subnets"].values()) - associated
    if unassociated or new_subnets:
        p.add(f"route {len(unassociated) + new_subnets} subnet(s) through the route table", associate)


async def _default_route(aws: AWSSession, p: Plan) -> None:
    await aws.call("ec2", p.region, "create_route", RouteTableId=p.ids["route_table"],
                   DestinationCidrBlock="0.0.0.0/0", GatewayId=p.ids["igw"])


# -- security groups ---------------------------------------------------------------------
async def _plan_security_groups(aws: AWSSession, p: Plan, ingress_cidr: str, existing: bool) -> None:
    region = p.region
    groups = []
    if existing:
        groups = await aws.pages("ec2", region, "describe_security_groups", "SecurityGroups", Filters=[
            {"Name": "vpc-id", "Values": [p.ids["vpc"]]}, tag_filter(MANAGED, "true")])
    purposes = {(as_dict(g.get("Tags")).get(PURPOSE), as_dict(g.get("Tags")).get(INGRESS)) for g in groups}
    if not any(purpose == "cluster" for purpose, _ in purposes):
        async def create_cluster_group() -> None:
            name = f"{NAME}-cluster"
            made = await aws.call(
                "ec2", region, "create_security_group", GroupName=name, VpcId=p.ids["vpc"],
                Description="coiled-lab: members of a cluster reach each other",
                TagSpecifications=tag_specs(["security-group"], managed(name, {PURPOSE: "cluster"})))
            await aws.call("ec2", region, "authorize_security_group_ingress", GroupId=made["GroupId"],
                           IpPermissions=[{"IpProtocol": "-1", "UserIdGroupPairs": [{"GroupId": made["GroupId"]}]}])

        p.add("create security group coiled-lab-cluster (cluster members reach each other)", create_cluster_group)
    if ("ingress", ingress_cidr) not in purposes:
        async def create_ingress() -> None:
            await create_ingress_group(aws, region, p.ids["vpc"], ingress_cidr)

        p.add(f"create security group {ingress_group_name(ingress_cidr)} "
              f"(scheduler and dashboard ports from {ingress_cidr} only)", create_ingress)


# -- IAM role and instance profile -------------------------------------------------------
async def _plan_role(aws: AWSSession, p: Plan) -> None:
    name, group = config.get("aws.instance-profile"), config.get("aws.log-group")
    policy = iam.instance_policy(group, p.ids["buckets"])
    tags = tag_list(managed(name))
    role = await _get_or_none(aws.call("iam", p.region, "get_role", RoleName=name))
    if role is None:
        async def create_role() -> None:
            await aws.call("iam", p.region, "create_role", RoleName=name, Tags=tags,
                           AssumeRolePolicyDocument=json.dumps(iam.trust_policy()),
                           Description="coiled-lab cluster VMs: write their CloudWatch log streams")

        p.add(f"create IAM role {name} for the VMs", create_role)
        current = None
    else:
        current = await _get_or_none(aws.call("iam", p.region, "get_role_policy", RoleName=name,
                                              PolicyName=iam.INLINE_POLICY))
    if current is None or _policy(current["PolicyDocument"]) != policy:
        async def put_policy() -> None:
            await aws.call("iam", p.region, "put_role_policy", RoleName=name, PolicyName=iam.INLINE_POLICY,
                           PolicyDocument=json.dumps(policy))

        p.add(f"{'set' if current is None else 'update'} the role's policy: write log streams in "
              f"{group}, read and upload environment archives", put_policy)

    profile = await _get_or_none(aws.call("iam", p.region, "get_instance_profile", InstanceProfileName=name))
    if profile is None:
        async def create_profile() -> None:
            await aws.call("iam", p.region, "create_instance_profile", InstanceProfileName=name, Tags=tags)
            await aws.call("iam", p.region, "add_role_to_instance_profile", InstanceProfileName=name, RoleName=name)

        p.add(f"create instance profile {name} holding the role", create_profile)
    elif not any(r["RoleName"] == name for r in profile["InstanceProfile"].get("Roles", [])):
        async def add_role() -> None:
            await aws.call("iam", p.region, "add_role_to_instance_profile", InstanceProfileName=name, RoleName=name)

        p.add(f"put the role into instance profile {name}", add_role)


def _policy(document: Any) -> Any:
    """A policy document as IAM returns it (a dict, or URL-encoded JSON text)."""
    if isinstance(document, str):
        from urllib.parse import unquote

        return json.loads(unquote(document))
    return document


async def _get_or_none(call: Awaitable[dict]) -> Optional[dict]:
    try:
        return await call
    except Exception as exc:
        if error_code(exc) == "NoSuchEntity":
            return None
        raise


# -- log group ----------------------------------------------------------------------------
async def _plan_log_group(aws: AWSSession, p: Plan) -> None:
    name, days = config.get("aws.log-group"), int(config.get("aws.log-retention-days"))
    groups = await aws.pages("logs", p.region, "describe_log_groups", "logGroups", logGroupNamePrefix=name)
    group = next((g for g in groups if g["logGroupName"] == name), None)
    if group is None:
        async def create_group() -> None:
            await aws.call("logs", p.region, "create_log_group", logGroupName=name, tags=managed(NAME))

        p.add(f"create log group {name}", create_group)
    if group is None or group.get("retentionInDays") != days:
        async def set_retention() -> None:
            await aws.call("logs", p.region, "put_retention_policy", logGroupName=name, retentionInDays=days)

        p.add(f"keep the log group's events for {days} days", set_retention)


# -- environment bucket -------------------------------------------------------------------
async def buckets_pattern(aws: AWSSession, region: str) -> str:
    """The environment buckets the policies name: the configured one, else this account's
    of every region (the instance role is global)."""
    configured = config.get("aws.env-bucket")
    if configured:
        return configured
    account = (await aws.call("sts", region, "get_caller_identity"))["Account"]
    return f"coiled-lab-envs-{account}-*"


async def _plan_bucket(aws: AWSSession, p: Plan, name: str, owner: Optional[str]) -> None:
    """The region's bucket of built environments: private, and objects removed after
    ``env-expire-days`` (a cluster using an environment older than that rebuilds it)."""
    if config.get("aws.env-bucket") is False:
        return
    days = int(config.get("aws.env-expire-days"))
    rules = [{"ID": "coiled-lab-expire", "Status": "Enabled", "Filter": {"Prefix": ""},
              "Expiration": {"Days": days}}]
    try:
        await aws.call("s3", p.region, "head_bucket", Bucket=name, **({"ExpectedBucketOwner": owner} if owner else {}))
        exists = True
    except Exception as exc:
        if error_code(exc) in ("403", "AccessDenied"):
            raise AWSError(f"the S3 bucket {name} exists and is not this account's (or you may not read it); name "
                           "another in coiled-lab.aws.env-bucket") from None
        if error_code(exc) not in ("404", "NoSuchBucket", "NotFound"):
            raise
        exists = False
    if not exists:
        async def create_bucket() -> None:
            where = {} if p.region == "us-east-1" else {"CreateBucketConfiguration": {"LocationConstraint": p.region}}
            await aws.call("s3", p.region, "create_bucket", Bucket=name, **where)
            await aws.call("s3", p.region, "put_public_access_block", Bucket=name, PublicAccessBlockConfiguration={
                "BlockPublicAcls": True, "IgnorePublicAcls": True, "BlockPublicPolicy": True,
                "RestrictPublicBuckets": True})
            await aws.call("s3", p.region, "put_bucket_tagging", Bucket=name,
                           Tagging={"TagSet": tag_list(managed(NAME))})

        p.add(f"create S3 bucket {name} for built environments (private)", create_bucket)
        current = None
    else:
        try:
            current = (await aws.call("s3", p.region, "get_bucket_lifecycle_configuration", Bucket=name))["Rules"]
        except Exception as exc:
            if error_code(exc) != "NoSuchLifecycleConfiguration":
                raise
            current = None
    if not current or [(r.get("Status"), r.get("Expiration", {}).get("Days")) for r in current] != [("Enabled", days)]:
        async def set_lifecycle() -> None:
            await aws.call("s3", p.region, "put_bucket_lifecycle_configuration", Bucket=name,
                           LifecycleConfiguration={"Rules": rules})

        p.add(f"remove environment archives from {name} after {days} days", set_lifecycle)
