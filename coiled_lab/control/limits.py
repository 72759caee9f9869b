"""Limits an admin sets (dask config ``coiled-lab.limits``), checked before any cloud call.

They sit beside validation, not inside ClusterSpec: a spec can be valid and still be more
than this deployment allows. The error names the limit, so a user knows whom to ask.
"""

from __future__ import annotations

import fnmatch
from typing import Any, Awaitable, Callable, Optional

from .. import config
from ..spec import ClusterSpec, ClusterSpecError


class LimitExceeded(ClusterSpecError):
    """A valid request beyond what the admin allows."""

    def __init__(self, field: Optional[str], limit: str, message: str):
        super().__init__(f"{field or 'request'}: {message} (limit coiled-lab.limits.{limit})", field)
        self.limit = limit

    def to_json(self) -> dict[str, Any]:
        return {**super().to_json(), "limit": self.limit}


async def check(
    spec: ClusterSpec, live_clusters: int, estimate: Callable[[ClusterSpec], Awaitable[dict]], new: bool = True
) -> None:
    """Raise LimitExceeded for the first limit this request breaks.

    ``live_clusters`` counts the clusters already live; ``new`` is False when an existing
    cluster changes (scale), which does not count against ``max-clusters``.
    """
    # Each key through config.get: dask stores a key set by environment variable
    # (DASK_COILED_LAB__LIMITS__MAX_WORKERS) as "max_workers", which only its getter matches.
    max_workers = config.get("limits.max-workers")
    if max_workers is not None and spec.n_workers > int(max_workers):
        raise LimitExceeded("n_workers", "max-workers", f"{spec.n_workers} workers asked, at most {max_workers} allowed")
    max_clusters = config.get("limits.max-clusters")
    if new and max_clusters is not None and live_clusters >= int(max_clusters):
        raise LimitExceeded(
            None, "max-clusters", f"{live_clusters} clusters already live, at most {max_clusters} allowed; stop one first"
        )
    patterns = config.get("limits.allowed-instance-types")
    if patterns and spec.backend != "local":
        for field in ("worker_vm_types", "scheduler_vm_type"):
            value = getattr(spec, field)
            for vm_type in [value] if isinstance(value, str) else value or []:
                if not any(fnmatch.fnmatchcase(vm_type, p) for p in patterns):
                    raise LimitExceeded(field, "allowed-instance-types",
                                        f"{vm_type!r} is not allowed; allowed: {', '.join(patterns)}")
    regions = config.get("limits.allowed-regions")
    if regions and spec.backend != "local" and spec.region and spec.region not in regions:
        raise LimitExceeded("region", "allowed-regions", f"{spec.region!r} is not allowed; allowed: {', '.join(regions)}")
    max_cost = config.get("limits.max-cost-per-hour")
    if max_cost is not None:
        per_hour = (await estimate(spec))["per_hour"]
        if per_hour > float(max_cost):
            raise LimitExceeded(
                "n_workers", "max-cost-per-hour",
                f"the estimate is ${per_hour:.2f}/hour, at most ${float(max_cost):.2f}/hour allowed",
            )
