"""An EC2 emulator: moto's instances, booted as bare VMs (:mod:`tests.vm`).

Each instance moto runs boots from the cached bare Debian 12 image, whatever its AMI
(the image the product asks for on CPU VMs), in the emulated network: the private
address moto gave it in its VPC, its public address (when its subnet maps one) NATed to
it, the ingress its security groups allow (address ranges, and groups expanded to their
members' private addresses), IMDSv2 at 169.254.169.254 (identity, the instance role's
credentials, spot interruption notices) and AWS at ``aws.emulator`` through the egress
proxy (moto, past the fault-injecting proxy). The user-data is run as cloud-init would
(gzip unpacked). A machine that powers itself off is terminated, as EC2 does with
``InstanceInitiatedShutdownBehavior=terminate``; an instance terminated through the API
has its machine killed; either way its root volume and network interface go
(DeleteOnTermination, which moto does not do). Console output is what the boot printed.
An AMI in :attr:`EC2Emulator.broken_images` boots with a python3 that cannot start.
"""

from __future__ import annotations

import base64
import datetime
import gzip
import json
import secrets
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any, Optional
from urllib.parse import urlparse

import boto3

from ..localhttp import LocalHTTP
from ..vm import Network, Rule
from ..vm.emulator import BROKEN_IMAGE_FILES, Boot, Emulator

PROTOCOLS = {"-1": "all", "tcp": "tcp", "udp": "udp", "icmp": "icmp", "6": "tcp", "17": "udp", "1": "icmp"}


@dataclass
class Identity:
    instance_id: str
    private_ip: str
    zone: str
    instance_type: str
    lifecycle: str
    role_name: str
    spot_action: Optional[str] = None  # JSON of a spot interruption notice, once given
    public_ip: Optional[str] = None
    vpc_id: Optional[str] = None
    mac: Optional[str] = None  # its network interface's
    tokens: set[str] = field(default_factory=set)


def imds_value(me: Identity, path: str) -> Optional[str]:
    """What IMDS answers at ``/latest/meta-data/<path>`` for instance ``me``."""
    now = datetime.datetime.now(datetime.timezone.utc)
    expires = now + datetime.timedelta(hours=6)
    values = {
        "instance-id": me.instance_id,
        "local-ipv4": me.private_ip,
        "placement/availability-zone": me.zone,
        "placement/region": me.zone[:-1],
        "instance-type": me.instance_type,
        "instance-life-cycle": me.lifecycle,
        "iam/security-credentials/": me.role_name,
        f"iam/security-credentials/{me.role_name}": json.dumps({
            "Code": "Success", "Type": "AWS-HMAC", "AccessKeyId": "ASIAEMULATEDINSTANCE",
            "SecretAccessKey": "emulated-instance-role", "Token": "emulated-session",
            "LastUpdated": now.strftime("%Y-%m-%dT%H:%M:%SZ"),
            "Expiration": expires.strftime("%Y-%m-%dT%H:%M:%SZ"),
        }),
        "spot/instance-action": me.spot_action,
    }
    if me.public_ip:
        values["public-ipv4"] = me.public_ip
    if me.mac:
        values["mac"] = me.mac
        values[f"network/interfaces/macs/{me.mac}/vpc-id"] = me.vpc_id
    return values.get(path)


def imds_handler(identity: Identity) -> type[BaseHTTPRequestHandler]:
    """IMDSv2 for one instance: a token first (PUT), then GETs that must carry it."""

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args) -> None:
            pass

        def _answer(self, status: int, text: str = "") -> None:
            body = text.encode()
            self.send_response(status)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_PUT(self) -> None:
            if self.path != "/latest/api/token" or not self.headers.get("X-aws-ec2-metadata-token-ttl-seconds"):
                return self._answer(400)
            token = secrets.token_urlsafe(16)
            identity.tokens.add(token)
            self._answer(200, token)

        def do_GET(self) -> None:
            if self.headers.get("X-aws-ec2-metadata-token") not in identity.tokens:
                return self._answer(401)  # IMDSv2 required: no token, no answer
            prefix = "/latest/meta-data/"
            value = imds_value(identity, self.path[len(prefix):]) if self.path.startswith(prefix) else None
            self._answer(200, value) if value is not None else self._answer(404)

    return Handler


class MetadataServer(LocalHTTP):
    """IMDSv2 for one instance on a loopback port of its own (bootstrap tests run the
    user-data on this machine); emulated VMs get :func:`imds_handler` at 169.254.169.254."""

    def __init__(self, identity: Identity):
        self.identity = identity
        super().__init__()

    def _handler(self):
        return imds_handler(self.identity)


class EC2Emulator(Emulator):
    """Boots moto's running instances in ``region`` as bare VMs on ``network``."""

    name = "ec2-emulator"

    def __init__(self, moto_url: str, region: str, network: Network, rootfs: Path, workdir: Path,
                 interval: float = 0.2, nice: int = 0):
        super().__init__(network, rootfs, workdir, interval, nice)
        self.region = region
        self.broken_images: set[str] = set()
        self.identities: dict[str, Identity] = {}
        self._reaped: set[str] = set()  # instances terminated before they were booted
        self._vpc_cidrs: dict[str, str] = {}
        self._ec2 = boto3.client("ec2", region_name=region, endpoint_url=moto_url,
                                 aws_access_key_id="emulator", aws_secret_access_key="emulator")
        port = urlparse(moto_url).port
        self.vm_endpoint = "http://" + network.allow("127.0.0.1", port, alias="aws.emulator")

    def interrupt(self, instance_id: str) -> None:
        """EC2 announces that it takes this spot instance back in two minutes."""
        when = (datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(minutes=2))
        self.identities[instance_id].spot_action = json.dumps(
            {"action": "terminate", "time": when.strftime("%Y-%m-%dT%H:%M:%SZ")})

    # -- what EC2 says -----------------------------------------------------------------------------
    def listed(self) -> dict[str, Any]:
        pages = self._ec2.get_paginator("describe_instances").paginate()
        listed = [i for page in pages for r in page["Reservations"] for i in r["Instances"]]
        for item in listed:
            # Terminated before it was ever booted here: its root volume still goes.
            gone = item["InstanceId"]
            if item["State"]["Name"] == "terminated" and gone not in self.machines and gone not in self._reaped:
                self._reaped.add(gone)
                self.ended(gone)
        return {i["InstanceId"]: i for i in listed if i["State"]["Name"] in ("pending", "running")}

    def boot(self, vm_id: str, item: dict) -> Optional[Boot]:
        attribute = self._ec2.describe_instance_attribute(InstanceId=vm_id, Attribute="userData")
        encoded = attribute.get("UserData", {}).get("Value")
        if not encoded:
            return None
        user_data = base64.b64decode(encoded)
        if user_data[:2] == b"\x1f\x8b":  # cloud-init unpacks gzip-compressed user-data
            user_data = gzip.decompress(user_data)
        profile = (item.get("IamInstanceProfile") or {}).get("Arn", "/coiled-lab-instance").rsplit("/", 1)[-1]
        identity = Identity(
            instance_id=vm_id, private_ip=item["PrivateIpAddress"],
            zone=item["Placement"]["AvailabilityZone"], instance_type=item["InstanceType"],
            lifecycle=item.get("InstanceLifecycle") or "on-demand", role_name=profile,
            public_ip=item.get("PublicIpAddress"), vpc_id=item.get("VpcId"),
            mac=next((n.get("MacAddress") for n in item.get("NetworkInterfaces", [])), None),
        )
        self.identities[vm_id] = identity
        vpc = item["VpcId"]
        if vpc not in self._vpc_cidrs:
            self._vpc_cidrs[vpc] = self._ec2.describe_vpcs(VpcIds=[vpc])["Vpcs"][0]["CidrBlock"]
        broken = item.get("ImageId") in self.broken_images
        return Boot(
            vm_id=vm_id, script=user_data, private_ip=identity.private_ip, vpc_id=vpc,
            vpc_cidr=self._vpc_cidrs[vpc], public_ip=identity.public_ip, metadata=imds_handler(identity),
            # What a VM has besides IMDS: AWS's endpoints by name (here one, the emulator's). No keys.
            env={"AWS_ENDPOINT_URL": self.vm_endpoint},
            files=BROKEN_IMAGE_FILES if broken else {},
        )

    def rules(self, listed: dict[str, Any]) -> dict[str, list[Rule]]:
        groups = {g["GroupId"]: g for g in self._ec2.describe_security_groups()["SecurityGroups"]}
        members: dict[str, list[str]] = {}
        for item in listed.values():
            for group in item.get("SecurityGroups", []):
                members.setdefault(group["GroupId"], []).append(item["PrivateIpAddress"])
        rules: dict[str, list[Rule]] = {}
        for vm_id, item in listed.items():
            mine: list[Rule] = []
            for group in item.get("SecurityGroups", []):
                for permission in groups.get(group["GroupId"], {}).get("IpPermissions", []):
                    sources = [r["CidrIp"] for r in permission.get("IpRanges", [])]
                    for pair in permission.get("UserIdGroupPairs", []):
                        sources += [f"{ip}/32" for ip in members.get(pair.get("GroupId", ""), [])]
                    protocol = PROTOCOLS.get(str(permission.get("IpProtocol")), "all")
                    ports = None
                    if protocol in ("tcp", "udp") and permission.get("FromPort") not in (None, -1):
                        ports = (permission["FromPort"], permission["ToPort"])
                    if sources:
                        mine.append(Rule(protocol, ports, tuple(sorted(sources))))
            rules[vm_id] = mine
        return rules

    def powered_off(self, vm_id: str) -> None:
        self._ec2.terminate_instances(InstanceIds=[vm_id])

    def ended(self, vm_id: str) -> None:
        """EC2 deletes a terminated instance's root volume and primary network interface
        (DeleteOnTermination); moto keeps both."""
        attached = [{"Name": "attachment.instance-id", "Values": [vm_id]}]
        for volume in self._ec2.describe_volumes(Filters=attached)["Volumes"]:
            self._ec2.detach_volume(VolumeId=volume["VolumeId"], InstanceId=vm_id, Force=True)
            self._ec2.delete_volume(VolumeId=volume["VolumeId"])
        for eni in self._ec2.describe_network_interfaces(Filters=attached)["NetworkInterfaces"]:
            self._ec2.delete_network_interface(NetworkInterfaceId=eni["NetworkInterfaceId"])
