"""What a user should hear about a running cluster, decided from what the manager observes.

Pure functions: given the scheduler's clocks, the watchdog's samples and the cost, say
which notifications are due. Each has a key naming the situation (e.g. the idle stretch it
belongs to), so the manager sends it once, however many passes see it. Backends add their
own (a zone out of capacity, a spot fallback) through ``ClusterContext.notify``.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Optional

from .. import config
from ..bootstrap.lifetime import time_left
from ..display import duration

LABELS = {"idle_timeout": "idle", "no_client_timeout": "without a client", "max_lifetime": "at its maximum lifetime"}


@dataclass(frozen=True)
class Notice:
    key: str  # the situation, so that it is told once
    kind: str  # "shutdown-soon", "gpu-idle", "budget", or a backend's kind
    level: str  # "info" | "warning" | "error"
    message: str


def _seconds(key: str) -> float:
    from dask.utils import parse_timedelta

    return float(parse_timedelta(config.get(f"notifications.{key}")))


def shutdown_soon(clocks: Optional[dict[str, Any]], now: Optional[float] = None) -> list[Notice]:
    """A timeout is about to stop the cluster: say so a few minutes before (or halfway,
    for timeouts shorter than twice that)."""
    if not clocks:
        return []
    now = time.time() if now is None else now
    warn = _seconds("shutdown-warning")
    out = []
    for field, left in time_left(clocks, now).items():
        timeout = clocks["timeouts"].get(field)
        if left is None or not timeout or left <= 0 or left > min(warn, timeout / 2):
            continue
        started = {"idle_timeout": clocks.get("idle_since"), "no_client_timeout": clocks.get("last_client_at"),
                   "max_lifetime": clocks.get("started_at")}[field]
        out.append(Notice(
            key=f"{field}:{started:.0f}", kind="shutdown-soon", level="warning",
            message=f"the cluster stops in {duration(left)} ({LABELS[field]} for {duration(timeout)}) "
                    "unless it gets work or a client",
        ))
    return out


def gpu_idle(samples: list[dict[str, Any]], now: Optional[float] = None) -> list[Notice]:
    """GPU workers whose GPUs stayed at 0% for the whole window (default 10 minutes)."""
    now = time.time() if now is None else now
    window = _seconds("gpu-idle")
    recent = [s for s in samples if s["time"] >= now - window]
    if not recent or recent[0]["time"] > now - window * 0.9:
        return []  # not watched for long enough yet
    gpus: dict[str, list[Optional[float]]] = {}
    for s in recent:
        for name, w in s.get("per_worker", {}).items():
            if "gpu" in w:
                gpus.setdefault(name, []).append(w["gpu"])
    idle = sorted(name for name, values in gpus.items() if values and all(not v for v in values))
    if not idle:
        return []
    return [Notice(
        key=f"gpu-idle:{','.join(idle)}:{int(recent[0]['time'] // window)}", kind="gpu-idle", level="warning",
        message=f"GPUs on {len(idle)} worker(s) have been unused for {duration(window)} "
                f"({', '.join(idle[:5])}{'...' if len(idle) > 5 else ''}); scale down or stop to save money",
    )]


def budget(cost: Optional[dict[str, Any]], limit: Optional[float]) -> list[Notice]:
    """The cluster's cost so far is nearing (80%) or past the per-cluster budget."""
    if not cost or not limit:
        return []
    share = cost["accrued"] / float(limit)
    if share >= 1:
        return [Notice("budget:100", "budget", "error",
                       f"the cluster has cost ${cost['accrued']:.2f}, its budget of ${float(limit):.2f} "
                       "(coiled-lab.limits.max-cost-per-cluster): stopping it")]
    if share >= 0.8:
        return [Notice("budget:80", "budget", "warning",
                       f"the cluster has cost ${cost['accrued']:.2f}, {share:.0%} of its budget of ${float(limit):.2f}")]
    return []
