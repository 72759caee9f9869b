"""Prices and cost: the one place that knows what a cluster costs.

Every front door shows what :func:`estimate` returns. The local backend costs nothing;
cloud backends add their price sources here when they arrive.
"""

from __future__ import annotations

import time
from typing import Any

from .spec import ClusterSpec, ClusterSpecError

CURRENCY = "USD"


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
