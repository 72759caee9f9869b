"""Tags: how every AWS resource coiled-lab makes can be found again without the store.

Per cluster: ``coiled-lab:cluster=<id>`` (instances, volumes, launch templates) and
``coiled-lab:role``; ``coiled-lab:owner`` names the state directory (hashed, by
:func:`coiled_lab.backends.base.owner_id`) whose store made the cluster, so a cleanup never
touches another installation's clusters in the same account. Shared infrastructure made by ``coiled-lab setup aws`` carries
``coiled-lab:managed=true``.
"""

from __future__ import annotations

from typing import Any, Iterable, Optional

CLUSTER = "coiled-lab:cluster"
ROLE = "coiled-lab:role"
OWNER = "coiled-lab:owner"
MANAGED = "coiled-lab:managed"
PURPOSE = "coiled-lab:purpose"  # of a shared resource: "cluster" or "ingress" security group, ...
INGRESS = "coiled-lab:ingress"  # the CIDR an ingress security group opens the scheduler to


def tag_list(tags: dict[str, str]) -> list[dict[str, str]]:
    return [{"Key": k, "Value": v} for k, v in tags.items()]


def tag_specs(resource_types: Iterable[str], tags: dict[str, str]) -> list[dict[str, Any]]:
    """``TagSpecifications`` that tag each of these resource types at creation."""
    return [{"ResourceType": t, "Tags": tag_list(tags)} for t in resource_types]


def as_dict(tags: list[dict[str, str]] | None) -> dict[str, str]:
    return {t["Key"]: t["Value"] for t in tags or ()}


def tag_filter(key: str, *values: str) -> dict[str, Any]:
    """An EC2 filter on a tag's value, or on the key alone when no value is given."""
    if values:
        return {"Name": f"tag:{key}", "Values": list(values)}
    return {"Name": "tag-key", "Values": [key]}


def managed(name: str, extra: Optional[dict[str, str]] = None) -> dict[str, str]:
    """Tags of a shared resource made by ``setup aws``."""
    return {"Name": name, MANAGED: "true", **(extra or {})}
