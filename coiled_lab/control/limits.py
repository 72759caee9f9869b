"""Limits an admin sets (dask config ``coiled-lab.limits``), checked before any cloud call.

They sit beside validation, not inside ClusterSpec: a spec can be valid and still be more
than this deployment allows. The error names the limit, so a user knows whom to ask.

Two kinds: :func:`check` judges one request alone (workers, types, regions, its $/hour);
:class:`Admission` judges it against every live cluster (``max-clusters``,
``max-total-cost-per-hour``). The second kind holds only if counting and recording are
one step: creates run concurrently and each awaits the cloud before it records its
cluster, so a create takes a slot in the count before its first await and gives it back
only once its record counts in its place (or it failed).
"""

from __future__ import annotations

import fnmatch
import ipaddress
import itertools
from contextlib import contextmanager
from typing import TYPE_CHECKING, Awaitable, Callable, Iterable, Iterator, Optional

from .. import config
from ..errors import LimitExceeded
from ..spec import ClusterSpec

if TYPE_CHECKING:
    from .store import ClusterRecord

ADMITTED_PER_HOUR = "admitted_per_hour"  # the estimate a live cluster was admitted with (its state)


async def check(spec: ClusterSpec, estimate: Callable[[ClusterSpec], Awaitable[dict]]) -> Optional[float]:
    """Raise LimitExceeded for the first limit this request alone breaks.

    Returns the spec's estimated $/hour when a cost limit asked for it (None otherwise),
    for :meth:`Admission.hold` to weigh against the live clusters'.
    """
    # Each key through config.get: dask stores a key set by environment variable
    # (DASK_COILED_LAB__LIMITS__MAX_WORKERS) as "max_workers", which only its getter matches.
    max_workers = config.get("limits.max-workers")
    most = spec.adaptive[1] if spec.adaptive else spec.n_workers  # an adaptive cluster may grow to its maximum
    if max_workers is not None and most > int(max_workers):
        asked = f"up to {most} workers asked (n_workers=[min, max])" if spec.adaptive else f"{most} workers asked"
        raise LimitExceeded("n_workers", "max-workers", f"{asked}, at most {max_workers} allowed")
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
    if spec.backend != "local" and _open_to_all(spec.allow_ingress_from) and not config.get("limits.allow-open-ingress"):
        raise LimitExceeded("allow_ingress_from", "allow-open-ingress",
                            f"{spec.allow_ingress_from} opens the scheduler's ports to the whole internet; "
                            "give the CIDR of the machines that connect ('me' is this server)")
    max_cost = config.get("limits.max-cost-per-hour")
    if max_cost is None and config.get("limits.max-total-cost-per-hour") is None:
        return None
    per_hour = float((await estimate(spec))["per_hour"])
    if max_cost is not None and per_hour > float(max_cost):
        raise LimitExceeded(
            "n_workers", "max-cost-per-hour",
            f"the estimate is ${per_hour:.2f}/hour, at most ${float(max_cost):.2f}/hour allowed",
        )
    return per_hour


class Admission:
    """The limits on all live clusters together, kept under concurrency.

    A create (or a scale) holds a slot while it awaits: the slot counts against
    ``max-clusters`` from the moment it is taken, and against ``max-total-cost-per-hour``
    from the moment its estimate is weighed. Counting and taking happen with no await in
    between, so no other request of this event loop can count in the meantime; the slot
    is given back when the request has recorded its cluster (which then counts in its
    place) or failed.
    """

    def __init__(self, live: Callable[[], Iterable["ClusterRecord"]]):
        self._live = live  # the store's live clusters
        self._held: dict[int, float] = {}  # slot -> $/hour weighed so far
        self._keys = itertools.count()

    @contextmanager
    def hold(self, replacing: Optional["ClusterRecord"] = None) -> Iterator[Callable[[Optional[float]], None]]:
        """Take a slot for a new cluster, or for ``replacing`` (a live cluster that changes:
        it takes no new place among ``max-clusters``). Yields ``weigh(per_hour)``, which
        refuses the request if its $/hour would take the live clusters and the slots held
        over ``max-total-cost-per-hour`` (None: not estimated, no cost limit is set). The
        block must record the change before it leaves."""
        if replacing is None:
            max_clusters = config.get("limits.max-clusters")
            live = sum(1 for _ in self._live())
            if max_clusters is not None and live + len(self._held) >= int(max_clusters):
                creating = f" and {len(self._held)} being created" if self._held else ""
                raise LimitExceeded(None, "max-clusters", f"{live} clusters already live{creating}, at most "
                                    f"{max_clusters} allowed; stop one first")
        key = next(self._keys)
        self._held[key] = 0.0
        try:
            yield lambda per_hour: self._weigh(key, per_hour, replacing)
        finally:
            del self._held[key]

    def _weigh(self, key: int, per_hour: Optional[float], replacing: Optional["ClusterRecord"]) -> None:
        max_total = config.get("limits.max-total-cost-per-hour")
        if max_total is None or per_hour is None:
            return
        if replacing is not None and per_hour <= admitted_per_hour(replacing):
            self._held[key] = 0.0  # less than it was admitted with: always allowed
            return
        others = sum(admitted_per_hour(rec) for rec in self._live() if replacing is None or rec.id != replacing.id)
        others += sum(cost for held, cost in self._held.items() if held != key)
        if others + per_hour > float(max_total):
            raise LimitExceeded("n_workers", "max-total-cost-per-hour",
                                f"the other clusters are admitted at ${others:.2f}/hour and this one is estimated "
                                f"at ${per_hour:.2f}/hour, at most ${float(max_total):.2f}/hour allowed in all; "
                                "stop or scale down one first")
        self._held[key] = per_hour


def admitted_per_hour(rec: "ClusterRecord") -> float:
    """What a live cluster counts for against ``max-total-cost-per-hour``: its estimate when
    it was created or last scaled, else (made before that limit was set) its cost now."""
    admitted = rec.state.get(ADMITTED_PER_HOUR)
    if admitted is not None:
        return float(admitted)
    return float((rec.state.get("cost") or {}).get("per_hour") or 0.0)


def _open_to_all(cidr: str) -> bool:
    return cidr != "me" and ipaddress.ip_network(cidr, strict=False).prefixlen == 0
