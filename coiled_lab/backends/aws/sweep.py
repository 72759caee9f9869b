"""Finding and removing what clusters left behind, by tag, without trusting any record.

- :func:`leftovers` removes a cluster's launch templates and detached volumes (its
  instances are the backend's ``stop_instances``' business);
- :func:`sweep` looks at a whole region for resources this store's clusters made
  (``coiled-lab:owner``) whose cluster is not live any more, and removes them: what
  ``coiled-lab cleanup`` runs after a crash, a lost state directory or a failed stop.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

from .session import AWSSession, error_code
from .tags import CLUSTER, OWNER, as_dict, tag_filter

ALIVE = ["pending", "running", "stopping", "stopped"]


async def leftovers(aws: AWSSession, region: str, cluster_id: str) -> list[str]:
    """Delete the cluster's launch templates and unattached volumes; return what went."""
    templates = await aws.pages("ec2", region, "describe_launch_templates", "LaunchTemplates",
                                Filters=[tag_filter(CLUSTER, cluster_id)])
    volumes = await aws.pages("ec2", region, "describe_volumes", "Volumes",
                              Filters=[tag_filter(CLUSTER, cluster_id), {"Name": "status", "Values": ["available"]}])
    return await _remove(aws, region, [t["LaunchTemplateId"] for t in templates], [v["VolumeId"] for v in volumes])


async def sweep(aws: AWSSession, region: str, owner: str, live: set[str], dry_run: bool) -> list[dict[str, Any]]:
    """Resources of this store's clusters that are not live; removed unless ``dry_run``."""
    mine = tag_filter(OWNER, owner)
    reservations = await aws.pages("ec2", region, "describe_instances", "Reservations",
                                   Filters=[mine, {"Name": "instance-state-name", "Values": ALIVE}])
    templates = await aws.pages("ec2", region, "describe_launch_templates", "LaunchTemplates", Filters=[mine])
    volumes = await aws.pages("ec2", region, "describe_volumes", "Volumes",
                              Filters=[mine, {"Name": "status", "Values": ["available"]}])
    found: dict[str, dict[str, list[str]]] = defaultdict(lambda: {"instances": [], "templates": [], "volumes": []})
    for reservation in reservations:
        for item in reservation["Instances"]:
            found[as_dict(item.get("Tags")).get(CLUSTER, "?")]["instances"].append(item["InstanceId"])
    for item in templates:
        found[as_dict(item.get("Tags")).get(CLUSTER, "?")]["templates"].append(item["LaunchTemplateId"])
    for item in volumes:
        found[as_dict(item.get("Tags")).get(CLUSTER, "?")]["volumes"].append(item["VolumeId"])
    out = []
    for cluster_id, items in sorted(found.items()):
        if cluster_id in live:
            continue
        if not dry_run:
            await terminate(aws, region, items["instances"])
            await _remove(aws, region, items["templates"], items["volumes"])
        out.append({"id": cluster_id, "region": region, **items})
    return out


async def terminate(aws: AWSSession, region: str, ids: list[str]) -> None:
    """Terminate instances, 1000 per request (the API's limit); already gone is fine.

    One unknown id fails a whole request, so such ids are dropped and the rest sent again.
    """
    for start in range(0, len(ids), 1000):
        batch = ids[start:start + 1000]
        try:
            await aws.call("ec2", region, "terminate_instances", InstanceIds=batch)
        except Exception as exc:
            if error_code(exc) != "InvalidInstanceID.NotFound":
                raise
            rest = [i for i in batch if i not in str(exc)]
            if rest:
                await aws.call("ec2", region, "terminate_instances", InstanceIds=rest)


async def _remove(aws: AWSSession, region: str, templates: list[str], volumes: list[str]) -> list[str]:
    removed = []
    for what, operation, param, gone, ids in (
        ("launch template", "delete_launch_template", "LaunchTemplateId", "InvalidLaunchTemplateId.NotFound", templates),
        ("volume", "delete_volume", "VolumeId", "InvalidVolume.NotFound", volumes),
    ):
        for resource in ids:
            try:
                await aws.call("ec2", region, operation, **{param: resource})
            except Exception as exc:
                if error_code(exc) != gone:
                    raise
            removed.append(f"{what} {resource}")
    return removed
