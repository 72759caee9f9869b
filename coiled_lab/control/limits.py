"""Limits an admin sets (dask config ``coiled-lab.limits``), checked before any cloud call.

They sit beside validation, not inside ClusterSpec: a spec can be valid and still be more
than this deployment allows. The error names the limit, so a user knows whom to ask.

Two kinds: :func:`check` judges one request alone (workers, types, regions, its $/hour);
:class:`Admission` judges it against the live clusters (``max-clusters``,
``max-total-cost-per-hour``) and the month's spending (``monthly-budget``). The second kind
holds only if counting and recording are one step: creates run concurrently and each
awaits the cloud before it records its cluster, so a create takes a slot in the count
before its first await and gives it back only once its record counts in its place (or it
failed).

Per user and per group (team mode): ``limits.users.<name>`` and ``limits.groups.<group>``
take the same keys. A key's value for a caller (:func:`limit`) is its user entry, else the
most generous of its groups' entries, else the global one. The counted keys
(``max-clusters``, ``max-total-cost-per-hour``) differ: the global value keeps counting
everybody's live clusters (a ceiling for the deployment), a user's or group's value counts
that user's own, and both hold. ``monthly-budget`` is always one user's spending.
"""

from __future__ import annotations

import fnmatch
import ipaddress
import itertools
import time
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any, Awaitable, Callable, Iterable, Iterator, Optional

from .. import config
from ..errors import LimitExceeded
from ..pricing import extrapolate
from ..spec import ClusterSpec
from .callers import LOCAL, Caller

if TYPE_CHECKING:
    from .store import ClusterRecord

ADMITTED_PER_HOUR = "admitted_per_hour"  # the estimate a live cluster was admitted with (its state)
LISTS = ("allowed-instance-types", "allowed-regions")  # null: anything; a group's list adds to another's
COST_KEYS = ("max-cost-per-hour", "max-total-cost-per-hour", "monthly-budget")


@dataclass(frozen=True)
class Limit:
    """A limit's value for one caller (None: no limit) and where it was set: None for the
    global key, else the entry (``users.alice.max-workers``) the refusal names."""

    value: Any
    where: Optional[str] = None

    def refuse(self, field: Optional[str], key: str, message: str) -> LimitExceeded:
        return LimitExceeded(field, key, message, self.where)


def limit(key: str, caller: Caller = LOCAL, own_only: bool = False) -> Limit:
    """``key``'s value for ``caller``: its ``users.<name>`` entry, else the most generous of
    its groups' entries (no limit beats any; a higher number, the union of lists, ``true``
    beat the rest), else (unless ``own_only``: the counted keys' per-user value) the
    global key. An entry that names the key with null sets no limit for that user/group."""
    entry = _entry(config.get("limits.users"), caller.name)
    if entry is not None and _has(entry, key):
        return Limit(_value(entry, key), f"users.{caller.name}.{key}")
    found = []
    for group in sorted(caller.groups):
        entry = _entry(config.get("limits.groups"), group)
        if entry is not None and _has(entry, key):
            found.append((group, _value(entry, key)))
    if found:
        return _most_generous(key, found)
    return Limit(None) if own_only else everybody(key)


def for_forms(caller: Caller) -> Callable[[str], tuple[Any, str]]:
    """What :func:`coiled_lab.schema.form_schema` asks: ``caller``'s value of a limit, and the
    config key that sets it (their own or their group's entry, else the global key)."""
    def limit_of(key: str) -> tuple[Any, str]:
        found = limit(key, caller)
        return found.value, f"coiled-lab.limits.{found.where or key}"
    return limit_of


def everybody(key: str) -> Limit:
    """The global ``key``: everybody's default, and for a counted key the deployment's ceiling."""
    # Through config.get: dask stores a key set by environment variable
    # (DASK_COILED_LAB__LIMITS__MAX_WORKERS) as "max_workers", which only its getter matches.
    return Limit(config.get(f"limits.{key}"))


def _entry(mapping: Any, name: str) -> Optional[dict[str, Any]]:
    """A user's or group's entry; ``-`` and ``_`` alike in its name, as in every dask key
    (an environment variable can only spell ``_``)."""
    if not isinstance(mapping, dict):
        return None
    if isinstance(mapping.get(name), dict):
        return mapping[name]
    for key, entry in mapping.items():
        if isinstance(entry, dict) and str(key).replace("_", "-") == name.replace("_", "-"):
            return entry
    return None


def _has(entry: dict[str, Any], key: str) -> bool:
    return any(str(k).replace("_", "-") == key for k in entry)


def _value(entry: dict[str, Any], key: str) -> Any:
    return next(v for k, v in entry.items() if str(k).replace("_", "-") == key)


def _most_generous(key: str, found: list[tuple[str, Any]]) -> Limit:
    if key in LISTS:
        if any(value is None for _, value in found):
            return Limit(None)
        union = list(dict.fromkeys(item for _, value in found for item in value))
        return Limit(union, " + ".join(f"groups.{group}.{key}" for group, _ in found))
    if key == "allow-open-ingress":
        group, value = max(found, key=lambda gv: bool(gv[1]))
        return Limit(bool(value), f"groups.{group}.{key}")
    if any(value is None for _, value in found):
        return Limit(None)
    group, value = max(found, key=lambda gv: float(gv[1]))
    return Limit(value, f"groups.{group}.{key}")


async def check(spec: ClusterSpec, estimate: Callable[[ClusterSpec], Awaitable[dict]], caller: Caller = LOCAL,
                always_estimate: bool = False) -> Optional[float]:
    """Raise LimitExceeded for the first limit this request alone breaks (``caller``'s).

    Returns the spec's estimated $/hour when a cost limit asked for it, or when
    ``always_estimate`` (None otherwise), for :meth:`Admission.hold` to weigh against the
    live clusters' and the month's spending.
    """
    max_workers = limit("max-workers", caller)
    most = spec.adaptive[1] if spec.adaptive else spec.n_workers  # an adaptive cluster may grow to its maximum
    if max_workers.value is not None and most > int(max_workers.value):
        asked = f"up to {most} workers asked (n_workers=[min, max])" if spec.adaptive else f"{most} workers asked"
        raise max_workers.refuse("n_workers", "max-workers", f"{asked}, at most {max_workers.value} allowed")
    patterns = limit("allowed-instance-types", caller)
    if patterns.value and spec.backend != "local":
        for field in ("worker_vm_types", "scheduler_vm_type"):
            value = getattr(spec, field)
            for vm_type in [value] if isinstance(value, str) else value or []:
                if not any(fnmatch.fnmatchcase(vm_type, p) for p in patterns.value):
                    raise patterns.refuse(field, "allowed-instance-types",
                                          f"{vm_type!r} is not allowed; allowed: {', '.join(patterns.value)}")
    regions = limit("allowed-regions", caller)
    if regions.value and spec.backend != "local" and spec.region and spec.region not in regions.value:
        raise regions.refuse("region", "allowed-regions",
                             f"{spec.region!r} is not allowed; allowed: {', '.join(regions.value)}")
    open_ingress = limit("allow-open-ingress", caller)
    if spec.backend != "local" and _open_to_all(spec.allow_ingress_from) and not open_ingress.value:
        raise open_ingress.refuse("allow_ingress_from", "allow-open-ingress",
                                  f"{spec.allow_ingress_from} opens the scheduler's ports to the whole internet; "
                                  "give the CIDR of the machines that connect ('me' is this server)")
    max_cost = limit("max-cost-per-hour", caller)
    if not always_estimate and not costs_limited(caller):
        return None
    per_hour = float((await estimate(spec))["per_hour"])
    if max_cost.value is not None and per_hour > float(max_cost.value):
        raise max_cost.refuse(
            "n_workers", "max-cost-per-hour",
            f"the estimate is ${per_hour:.2f}/hour, at most ${float(max_cost.value):.2f}/hour allowed",
        )
    return per_hour


def costs_limited(caller: Caller) -> bool:
    """Whether any limit on cost applies to ``caller`` (so its requests must be estimated)."""
    return any(limit(key, caller).value is not None for key in COST_KEYS) or \
        everybody("max-total-cost-per-hour").value is not None


@dataclass
class _Slot:
    owner: str
    new: bool  # a create (it takes a place among max-clusters), not a change of a live cluster
    per_hour: float = 0.0


class Admission:
    """The limits on the live clusters together, kept under concurrency.

    A create (or a scale) holds a slot while it awaits: the slot counts against
    ``max-clusters`` from the moment it is taken, and against ``max-total-cost-per-hour``
    and ``monthly-budget`` from the moment its estimate is weighed. Counting and taking
    happen with no await in between, so no other request of this event loop can count in
    the meantime; the slot is given back when the request has recorded its cluster (which
    then counts in its place) or failed. A slot is its owner's too, for the per-user counts.
    """

    def __init__(self, live: Callable[[], Iterable["ClusterRecord"]],
                 spent: Optional[Callable[[str], float]] = None):
        """``live()``: the store's live clusters; ``spent(owner)``: what ``owner``'s clusters
        cost this calendar month so far (:func:`spent_this_month`)."""
        self._live = live
        self._spent = spent or (lambda owner: 0.0)
        self._held: dict[int, _Slot] = {}
        self._keys = itertools.count()

    @contextmanager
    def hold(self, replacing: Optional["ClusterRecord"] = None,
             caller: Caller = LOCAL) -> Iterator[Callable[[Optional[float]], None]]:
        """Take a slot for a new cluster of ``caller``'s, or for ``replacing`` (a live cluster
        that changes: it takes no new place among ``max-clusters``; ``caller`` is then the
        one whose limits it is judged by, its owner). Yields ``weigh(per_hour)``, which
        refuses the request if its $/hour would take the live clusters and the slots held
        over ``max-total-cost-per-hour`` or its owner over ``monthly-budget`` (None: not
        estimated, no cost limit is set). The block must record the change before it leaves."""
        if replacing is None:
            self._count(list(self._live()), caller)
        key = next(self._keys)
        self._held[key] = _Slot(caller.name, replacing is None)
        try:
            yield lambda per_hour: self._weigh(key, per_hour, replacing, caller)
        finally:
            del self._held[key]

    def _count(self, live: list["ClusterRecord"], caller: Caller) -> None:
        creating = [slot for slot in self._held.values() if slot.new]
        max_clusters = everybody("max-clusters")
        if max_clusters.value is not None and len(live) + len(creating) >= int(max_clusters.value):
            being = f" and {len(creating)} being created" if creating else ""
            raise max_clusters.refuse(None, "max-clusters", f"{len(live)} clusters already live{being}, at most "
                                      f"{max_clusters.value} allowed; stop one first")
        own = limit("max-clusters", caller, own_only=True)
        if own.value is not None:
            mine = sum(1 for rec in live if rec.owner == caller.name)
            mine_held = sum(1 for slot in creating if slot.owner == caller.name)
            if mine + mine_held >= int(own.value):
                being = f" and {mine_held} being created" if mine_held else ""
                raise own.refuse(None, "max-clusters", f"{caller.name} has {mine} clusters live{being}, at most "
                                 f"{own.value} allowed; stop one first")

    def _weigh(self, key: int, per_hour: Optional[float], replacing: Optional["ClusterRecord"],
               caller: Caller) -> None:
        if per_hour is None:
            return
        if replacing is not None and per_hour <= admitted_per_hour(replacing):
            self._held[key].per_hour = 0.0  # less than it was admitted with: always allowed
            return
        others = [rec for rec in self._live() if replacing is None or rec.id != replacing.id]
        held = [slot for k, slot in self._held.items() if k != key]
        total = everybody("max-total-cost-per-hour")
        if total.value is not None:
            cost = sum(admitted_per_hour(rec) for rec in others) + sum(slot.per_hour for slot in held)
            self._over_total(total, cost, per_hour, "the other clusters are")
        own = limit("max-total-cost-per-hour", caller, own_only=True)
        if own.value is not None:
            cost = sum(admitted_per_hour(rec) for rec in others if rec.owner == caller.name)
            cost += sum(slot.per_hour for slot in held if slot.owner == caller.name)
            self._over_total(own, cost, per_hour, f"{caller.name}'s other clusters are")
        budget = limit("monthly-budget", caller)
        if budget.value is not None:
            # Spent so far, plus an hour of each request of the owner's being admitted and of this one.
            spent = self._spent(caller.name) + sum(slot.per_hour for slot in held if slot.owner == caller.name)
            if spent + per_hour > float(budget.value):
                raise budget.refuse("n_workers", "monthly-budget",
                                    f"{caller.name}'s clusters cost an estimated ${spent:.2f} this month and this "
                                    f"one's first hour would be ${per_hour:.2f}, at most ${float(budget.value):.2f} "
                                    "a month allowed")
        self._held[key].per_hour = per_hour

    @staticmethod
    def _over_total(total: Limit, others: float, per_hour: float, whose: str) -> None:
        if others + per_hour > float(total.value):
            raise total.refuse("n_workers", "max-total-cost-per-hour",
                               f"{whose} admitted at ${others:.2f}/hour and this one is estimated "
                               f"at ${per_hour:.2f}/hour, at most ${float(total.value):.2f}/hour allowed in all; "
                               "stop or scale down one first")


def admitted_per_hour(rec: "ClusterRecord") -> float:
    """What a live cluster counts for against ``max-total-cost-per-hour``: its estimate when
    it was created or last scaled, else (made before that limit was set) its cost now."""
    admitted = rec.state.get(ADMITTED_PER_HOUR)
    if admitted is not None:
        return float(admitted)
    return float((rec.state.get("cost") or {}).get("per_hour") or 0.0)


def month_start(now: float) -> float:
    """When the calendar month of ``now`` began (UTC), in epoch seconds."""
    day = datetime.fromtimestamp(now, timezone.utc)
    return day.replace(day=1, hour=0, minute=0, second=0, microsecond=0).timestamp()


def spent_this_month(records: Iterable["ClusterRecord"], now: Optional[float] = None) -> float:
    """What these clusters cost in this calendar month (UTC) so far, from the cost the store
    keeps per cluster (accrued over its whole life, brought up to now while it runs). A
    cluster that began before the month counts for the month's share of its life: an
    estimate, as every cost here is. A cost that is unknown counts nothing."""
    now = time.time() if now is None else now
    start = month_start(now)
    total = 0.0
    for rec in records:
        cost = extrapolate(rec.state.get("cost"), now) if rec.live else rec.state.get("cost")
        accrued = (cost or {}).get("accrued")
        end = now if rec.live else (rec.stopped_at or rec.updated_at)
        if not accrued or end < start:
            continue
        life = end - rec.created_at
        total += accrued if rec.created_at >= start or life <= 0 else accrued * (end - start) / life
    return total


def _open_to_all(cidr: str) -> bool:
    return cidr != "me" and ipaddress.ip_network(cidr, strict=False).prefixlen == 0
