"""Finding and removing VMs clusters left behind, by label, without trusting any record.

:func:`sweep` looks at a region for VMs this store's clusters made (``coiled-lab-owner``)
whose cluster is not live any more, and deletes them: what ``coiled-lab cleanup`` runs
after a crash, a lost state directory or a failed stop. Boot disks go with their VMs
(``auto_delete``), so VMs are all there is to remove.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

from . import instances
from .labels import CLUSTER, OWNER, label_filter
from .session import GCPSession


async def listed(gcp: GCPSession, region: str, label_key: str, label_value: str) -> list[Any]:
    """The region's VMs carrying this label, in any state: one ``aggregatedList``."""
    client = gcp.compute("Instances")

    def collect() -> list[Any]:
        out = []
        for scope, scoped in client.aggregated_list(request={
                "project": gcp.project, "filter": label_filter(label_key, label_value)}):
            if scope.rsplit("/", 1)[-1].startswith(f"{region}-"):
                out.extend(scoped.instances)
        return out

    return await gcp.call(collect)


async def sweep(gcp: GCPSession, region: str, owner: str, live: set[str], dry_run: bool) -> list[dict[str, Any]]:
    """VMs of this store's clusters that are not live; deleted unless ``dry_run``."""
    found: dict[str, list[tuple[str, str]]] = defaultdict(list)
    for item in await listed(gcp, region, OWNER, owner):
        found[item.labels.get(CLUSTER, "?")].append((item.zone.rsplit("/", 1)[-1], item.name))
    out = []
    for cluster_id, vms in sorted(found.items()):
        if cluster_id in live:
            continue
        if not dry_run:
            await instances.delete(gcp, vms)
        out.append({"id": cluster_id, "region": region, "instances": [name for _, name in vms]})
    return out
