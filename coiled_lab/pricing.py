"""Prices and cost: the one place that knows what a cluster costs.

Every front door shows what this module returns: :func:`estimate` before launch, and
:func:`accrued` from the real launch and terminate times of each instance after it
(per-second billing with a 60 s minimum, as EC2 and Compute Engine bill Linux VMs).
The local backend costs nothing.
"""

from __future__ import annotations

import time
from typing import Any, Callable, Iterable, Optional

from .spec import ClusterSpec, ClusterSpecError

CURRENCY = "USD"
MINIMUM_BILLED_SECONDS = 60


def estimate(spec: ClusterSpec) -> dict[str, Any]:
    """$/hour for a spec before launch: scheduler + n_workers x worker (+ storage)."""
    if spec.backend != "local":
        raise ClusterSpecError(
            f"backend: {spec.backend!r} is not allowed: no prices for it are available here; available: 'local'",
            "backend",
        )
    return {
        "backend": spec.backend,
        "per_hour": 0.0,
        "scheduler": 0.0,
        "workers": 0.0,
        "worker_each": 0.0,
        "n_workers": spec.n_workers,
        "storage": 0.0,
        "currency": CURRENCY,
        "spot_savings": 0.0,
        "source": "local processes on this machine cost nothing",
        "as_of": time.time(),
        "notes": [],
    }


def instance_price(backend: str, instance: Any) -> float:
    """$/hour of one running instance (from its type, zone and purchase option)."""
    if backend == "local":
        return 0.0
    raise ClusterSpecError(f"backend: {backend!r} has no price source here", "backend")


def accrued(
    instances: Iterable[Any], price_of: Callable[[Any], float], now: Optional[float] = None
) -> dict[str, float]:
    """Cost so far and current $/hour from instances' launch/terminate times."""
    now = time.time() if now is None else now
    total = per_hour = 0.0
    for inst in instances:
        price = price_of(inst)
        end = inst.terminated_at if inst.terminated_at is not None else now
        seconds = max(MINIMUM_BILLED_SECONDS, end - inst.launched_at)
        total += price * seconds / 3600
        if inst.terminated_at is None:
            per_hour += price
    return {"accrued": total, "per_hour": per_hour, "currency": CURRENCY, "as_of": now}


def extrapolate(cost: Optional[dict[str, Any]], now: Optional[float] = None) -> Optional[dict[str, Any]]:
    """A stored cost brought up to now at its $/hour (between two cost updates)."""
    if not cost:
        return None
    now = time.time() if now is None else now
    return {**cost, "accrued": cost["accrued"] + cost["per_hour"] * max(0.0, now - cost["as_of"]) / 3600, "as_of": now}
