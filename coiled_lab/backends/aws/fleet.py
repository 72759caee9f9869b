"""Launching: one EC2 Fleet request (type ``instant``) per batch of machines, whatever its size.

A launch makes a launch template for this batch (image, instance profile, security groups,
user-data, IMDSv2 required, shutdown means terminate, tags on the instances and their
volumes), sends one ``CreateFleet`` whose overrides list every allowed (instance type,
subnet) pool in order of preference, and deletes the template again: instances do not
need their template once they exist, so none is left to clean up between launches.

The fleet itself moves on to the next pool when a pool lacks capacity
(``InsufficientInstanceCapacity`` in a zone: the next zone, when the overrides allow
one), and answers with what it launched plus an error per pool that failed; it never
throws on capacity, so botocore's retries never repeat a launch. With
``spot_with_fallback`` what spot could not provide is asked for on-demand in one more
request.
"""

from __future__ import annotations

import base64
import logging
import secrets
import time
from dataclasses import dataclass
from typing import Any, Callable, Optional

from ..base import Instance
from .catalog import InstanceType
from .session import AWSError, AWSSession, error_code
from .tags import tag_specs

logger = logging.getLogger("coiled_lab.aws")


@dataclass
class Launched:
    instances: list[Instance]
    template_left: Optional[str] = None  # a launch template that could not be deleted


@dataclass(frozen=True)
class Pool:
    """One place capacity may come from: an instance type in a subnet (so in one zone)."""

    type: InstanceType
    zone: str
    subnet: str


def template_data(image: str, profile: str, groups: list[str], user_data: bytes, tags: dict[str, str],
                  instance_type: str, root_disk: Optional[dict[str, Any]] = None) -> dict[str, Any]:
    """The launch template: everything but the pool, which the fleet's overrides choose;
    ``root_disk`` a block device mapping for a root disk other than the image's."""
    return {
        **({"BlockDeviceMappings": [root_disk]} if root_disk else {}),
        "ImageId": image,
        "InstanceType": instance_type,
        "IamInstanceProfile": {"Name": profile},
        "SecurityGroupIds": groups,
        "UserData": base64.b64encode(user_data).decode(),
        "InstanceInitiatedShutdownBehavior": "terminate",
        "MetadataOptions": {"HttpTokens": "required", "HttpEndpoint": "enabled", "HttpPutResponseHopLimit": 1},
        "TagSpecifications": tag_specs(["instance", "volume"], tags),
    }


async def launch(
    aws: AWSSession,
    region: str,
    name: str,
    data: dict[str, Any],
    tags: dict[str, str],
    pools: list[Pool],
    count: int,
    role: str,
    spot_policy: str = "on-demand",
    notify: Callable[[str, str], None] = lambda kind, message: None,
) -> Launched:
    """Launch up to ``count`` machines from ``pools``; return those that exist.

    Fewer than ``count`` is not an error (the manager asks again for the rest); none at
    all is an :class:`AWSError` naming what each pool answered. A fallback to on-demand
    and a short launch are also told to the user through ``notify``.
    """
    template_left: Optional[str] = None
    template = await aws.call(
        "ec2", region, "create_launch_template",
        ClientToken=secrets.token_hex(16),  # a retry after a lost answer gets the same template back
        LaunchTemplateName=f"{name}-{secrets.token_hex(3)}", LaunchTemplateData=data,
        TagSpecifications=tag_specs(["launch-template"], tags),
    )
    template_id = template["LaunchTemplate"]["LaunchTemplateId"]
    try:
        capacity = "on-demand" if spot_policy == "on-demand" else "spot"
        launched, errors = await _fleet(aws, region, template_id, pools, count, capacity, role)
        if spot_policy == "spot_with_fallback" and len(launched) < count:
            notify("spot", f"spot capacity for {len(launched)} of {count} {role}s "
                           f"({'; '.join(errors) or 'no reason given'}); the other {count - len(launched)} on-demand")
            more, more_errors = await _fleet(aws, region, template_id, pools, count - len(launched), "on-demand", role)
            launched += more
            errors += more_errors
    finally:
        try:
            await aws.call("ec2", region, "delete_launch_template", LaunchTemplateId=template_id)
        except Exception as exc:  # noqa: BLE001 - cleanup() removes a template left behind
            logger.warning("could not delete launch template %s: %s", template_id, exc)
            template_left = template_id
    if not launched:
        raise AWSError(f"EC2 launched no {role} ({'; '.join(errors) or 'no reason given'})")
    if len(launched) < count:
        notify("capacity", f"EC2 launched {len(launched)} of {count} {role}s ({'; '.join(errors)}); "
                           "the rest will be asked for again")
    return Launched(launched, template_left)


async def _fleet(
    aws: AWSSession, region: str, template_id: str, pools: list[Pool], count: int, capacity: str, role: str,
) -> tuple[list[Instance], list[str]]:
    zone_of = {p.subnet: p.zone for p in pools}
    target: dict[str, Any] = {"TotalTargetCapacity": count, "DefaultTargetCapacityType": capacity}
    target["SpotTargetCapacity" if capacity == "spot" else "OnDemandTargetCapacity"] = count
    options = ({"SpotOptions": {"AllocationStrategy": "price-capacity-optimized"}} if capacity == "spot"
               else {"OnDemandOptions": {"AllocationStrategy": "prioritized"}})
    try:
        answer = await aws.call(
            "ec2", region, "create_fleet",
            # botocore sends a request again, with this token, when its answer is lost;
            # EC2 then returns the first request's fleet instead of launching another.
            ClientToken=secrets.token_hex(16),
            Type="instant",
            TargetCapacitySpecification=target,
            LaunchTemplateConfigs=[{
                "LaunchTemplateSpecification": {"LaunchTemplateId": template_id, "Version": "$Latest"},
                "Overrides": [{"InstanceType": p.type.name, "SubnetId": p.subnet, "Priority": float(i)}
                              for i, p in enumerate(pools)],
            }],
            **options,
        )
    except Exception as exc:
        if error_code(exc) is None:
            raise
        return [], [f"{error_code(exc)}: {exc}"]
    now = time.time()
    launched = []
    for group in answer.get("Instances", []):
        overrides = group.get("LaunchTemplateAndOverrides", {}).get("Overrides", {})
        vm_type = group.get("InstanceType") or overrides.get("InstanceType")
        for instance_id in group.get("InstanceIds", []):
            launched.append(Instance(
                id=instance_id, role=role, vm_type=vm_type, zone=zone_of.get(overrides.get("SubnetId")),
                spot=group.get("Lifecycle") == "spot", launched_at=now, data={"region": region},
            ))
    errors = []
    for error in answer.get("Errors", []):
        overrides = error.get("LaunchTemplateAndOverrides", {}).get("Overrides", {})
        errors.append(f"{error.get('ErrorCode')} for {overrides.get('InstanceType', '?')} in "
                      f"{zone_of.get(overrides.get('SubnetId'), '?')} ({error.get('Lifecycle', capacity)}): "
                      f"{error.get('ErrorMessage', '')}")
    return launched, errors
