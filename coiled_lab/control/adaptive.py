"""Adaptive scaling, run by the control plane rather than by the kernel.

``n_workers=[min, max]`` records the bounds in the spec (``adaptive``). On each reconcile
pass of a running cluster the manager calls :func:`step`: it asks the scheduler for its
own adaptive target (distributed's ``Scheduler.adaptive_target``: enough workers for the
queued work and the memory in use, fewer when workers sit idle), keeps it within the
bounds, and scales through :meth:`ClusterManager.scale_adaptively` as the owner would, so
the owner's limits and the estimate apply (and the audit log names the policy). Because
the policy lives next to the reconcile loop, a cluster keeps adapting after the kernel
that made it exits, and whether it was started from the CLI, the sidebar or ``Cluster(...)``.

Going up is done at once; going down only after the scheduler has wanted fewer workers
for ``coiled-lab.adaptive.wait-count`` readings in a row (as distributed's ``Adaptive``
does), so a short pause between two computations does not throw workers away.
"""

from __future__ import annotations

import asyncio
import logging
import time
import weakref
from dataclasses import dataclass
from typing import TYPE_CHECKING, Optional

from dask.utils import parse_timedelta

from .. import config
from ..errors import ClusterSpecError
from .notifications import Notice
from .states import State, Target
from .store import ClusterRecord

if TYPE_CHECKING:
    from .manager import ClusterManager

logger = logging.getLogger("coiled_lab.adaptive")
ASK_TIMEOUT = 5.0  # seconds the scheduler has to answer; no answer: try again next pass


@dataclass
class Tally:
    """What one cluster's adaptive policy remembers between passes (in memory: a restart
    only starts the count of low readings again)."""

    asked_at: float = 0.0
    below: int = 0  # readings in a row that wanted fewer workers than the spec has


_tallies: "weakref.WeakKeyDictionary[ClusterManager, dict[str, Tally]]" = weakref.WeakKeyDictionary()


def wanted(target: int, bounds: list[int]) -> int:
    """The scheduler's target kept within ``[min, max]``."""
    low, high = bounds
    return max(low, min(high, int(target)))


async def step(manager: "ClusterManager", rec: ClusterRecord, address: Optional[str]) -> bool:
    """One look at an adaptive cluster: scale toward the scheduler's target within the
    bounds; True when it did. Nothing for a cluster without bounds, one not running, or
    asked too recently."""
    bounds = rec.spec.get("adaptive")
    if not bounds or not address or rec.target == Target.stopped or rec.status not in (State.running, State.scaling):
        return False
    tally = _tallies.setdefault(manager, {}).setdefault(rec.id, Tally())
    now = time.monotonic()
    if now - tally.asked_at < parse_timedelta(config.get("adaptive.interval"), default="seconds"):
        return False
    tally.asked_at = now
    try:
        r = manager.schedulers.rpc(rec.id, address)
        target = await asyncio.wait_for(r.adaptive_target(), ASK_TIMEOUT)
    except (OSError, asyncio.TimeoutError) as exc:
        logger.info("cluster %s: no adaptive target from the scheduler (%s)", rec.name, exc)
        return False
    current = rec.spec["n_workers"]
    goal = wanted(target, bounds)
    tally.below = tally.below + 1 if goal < current else 0
    if goal > current or (goal < current and tally.below >= int(config.get("adaptive.wait-count"))):
        tally.below = 0
        logger.info("cluster %s: adaptive scaling from %d to %d workers (scheduler's target %d, bounds %s)",
                    rec.name, current, goal, target, bounds)
        try:
            await manager.scale_adaptively(rec.id, goal)
        except ClusterSpecError as exc:  # an admin's limit: stay where we are, and say so once
            manager.notify(rec.id, Notice(f"adaptive-{goal}", "adaptive", "warning",
                                          f"adaptive scaling wanted {goal} workers: {exc.message}"))
            return False
        return True
    return False

