"""The network a cluster launches into: what ``coiled-lab setup aws`` prepared, found by tag.

One VPC with a subnet per availability zone, a security group that lets cluster members
reach each other on every port, and "ingress" security groups that open the scheduler
(8786) and dashboard (8787) ports to one CIDR each. A cluster asking for a CIDR no group
opens yet gets a new ingress group (shared by later clusters asking for the same CIDR).
The default CIDR, ``me``, is this server's own address, so nothing is open to the world
unless someone writes ``0.0.0.0/0``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

from ..ingress import DASHBOARD_PORT, SCHEDULER_PORT
from .session import AWSError, AWSSession, error_code
from .tags import INGRESS, MANAGED, PURPOSE, as_dict, managed, tag_filter, tag_specs


@dataclass
class Network:
    vpc_id: str
    subnets: dict[str, str]  # availability zone -> subnet id, zones in name order
    cluster_group: Optional[str] = None  # members of a cluster reach each other
    ingress_groups: dict[str, str] = field(default_factory=dict)  # CIDR -> group opening 8786-8787 to it
    ssh_groups: dict[str, str] = field(default_factory=dict)  # CIDR -> group opening 22 to it (allow_ssh_from)

    def to_state(self) -> dict[str, Any]:
        return {"vpc_id": self.vpc_id, "subnets": self.subnets, "cluster_group": self.cluster_group}


def ingress_group_name(cidr: str) -> str:
    return "coiled-lab-ingress-" + cidr.replace("/", "-").replace(":", "-")


async def find(aws: AWSSession, region: str, vpc_id: Optional[str] = None) -> Network:
    """The prepared network (two describe calls), or AWSError saying to run setup."""
    filters = [tag_filter(MANAGED, "true")] + ([{"Name": "vpc-id", "Values": [vpc_id]}] if vpc_id else [])
    subnets = await aws.pages("ec2", region, "describe_subnets", "Subnets", Filters=filters)
    vpcs = sorted({s["VpcId"] for s in subnets})
    if not vpcs:
        raise AWSError(f"coiled-lab has no network in {region}{f' VPC {vpc_id}' if vpc_id else ''}: "
                       f"run `coiled-lab setup aws --region {region}` once")
    if len(vpcs) > 1:
        raise AWSError(f"`coiled-lab setup aws` prepared several VPCs in {region} ({', '.join(vpcs)}); "
                       "choose one with the config key coiled-lab.aws.vpc-id")
    network = Network(vpc_id=vpcs[0], subnets={s["AvailabilityZone"]: s["SubnetId"]
                                               for s in sorted(subnets, key=lambda s: s["AvailabilityZone"])})
    groups = await aws.pages(
        "ec2", region, "describe_security_groups", "SecurityGroups",
        Filters=[{"Name": "vpc-id", "Values": [network.vpc_id]}, tag_filter(MANAGED, "true")],
    )
    for group in groups:
        tags = as_dict(group.get("Tags"))
        if tags.get(PURPOSE) == "cluster":
            network.cluster_group = group["GroupId"]
        elif tags.get(PURPOSE) == "ingress" and tags.get(INGRESS):
            network.ingress_groups[tags[INGRESS]] = group["GroupId"]
        elif tags.get(PURPOSE) == "ssh" and tags.get(INGRESS):
            network.ssh_groups[tags[INGRESS]] = group["GroupId"]
    if network.cluster_group is None:
        raise AWSError(f"the coiled-lab security group is missing in {network.vpc_id}: "
                       f"run `coiled-lab setup aws --region {region}` again")
    return network


async def create_ingress_group(aws: AWSSession, region: str, vpc_id: str, cidr: str,
                               purpose: str = "ingress") -> str:
    """A security group opening the scheduler and dashboard ports (``purpose`` "ingress"),
    or SSH ("ssh"), to ``cidr`` alone."""
    name = ingress_group_name(cidr) if purpose == "ingress" else f"coiled-lab-ssh-{cidr.replace('/', '-')}".replace(
        ":", "-")
    ports, what = (SCHEDULER_PORT, DASHBOARD_PORT), "Dask scheduler and dashboard"
    if purpose == "ssh":
        ports, what = (22, 22), "SSH"
    try:
        group = await aws.call(
            "ec2", region, "create_security_group",
            GroupName=name, VpcId=vpc_id,
            Description=f"coiled-lab: {what} ports from {cidr}",
            TagSpecifications=tag_specs(["security-group"], managed(name, {PURPOSE: purpose, INGRESS: cidr})),
        )
    except Exception as exc:
        if error_code(exc) != "InvalidGroup.Duplicate":
            raise
        # Another cluster made it a moment ago.
        found = await aws.call("ec2", region, "describe_security_groups", Filters=[
            {"Name": "vpc-id", "Values": [vpc_id]}, {"Name": "group-name", "Values": [name]}])
        return found["SecurityGroups"][0]["GroupId"]
    await aws.call(
        "ec2", region, "authorize_security_group_ingress",
        GroupId=group["GroupId"],
        IpPermissions=[{
            "IpProtocol": "tcp", "FromPort": ports[0], "ToPort": ports[1],
            **({"Ipv6Ranges": [{"CidrIpv6": cidr, "Description": what}]} if ":" in cidr
               else {"IpRanges": [{"CidrIp": cidr, "Description": what}]}),
        }],
    )
    return group["GroupId"]


async def ingress_group(aws: AWSSession, region: str, network: Network, cidr: str) -> str:
    """The group opening the scheduler to ``cidr``, made if no cluster needed it before."""
    if cidr not in network.ingress_groups:
        network.ingress_groups[cidr] = await create_ingress_group(aws, region, network.vpc_id, cidr)
    return network.ingress_groups[cidr]


async def ssh_group(aws: AWSSession, region: str, network: Network, cidr: str) -> str:
    """The group opening port 22 to ``cidr`` (``allow_ssh_from``), made if no cluster needed it before."""
    if cidr not in network.ssh_groups:
        network.ssh_groups[cidr] = await create_ingress_group(aws, region, network.vpc_id, cidr, "ssh")
    return network.ssh_groups[cidr]
