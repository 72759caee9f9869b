"""What a user should hear about a running cluster, decided from what the manager observes.

Pure functions: given the scheduler's clocks, the watchdog's samples and the cost, say
which notifications are due. Each has a key naming the situation (e.g. the idle stretch it
belongs to), so the manager sends it once, however many passes see it. Backends add their
own (a zone out of capacity, a spot fallback) through ``ClusterContext.notify``.
"""

from __future__ import annotations

import math
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
    kind: str  # "shutdown-soon", "gpu-idle", "budget", "packages", or a backend's kind
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
    """The cluster's cost so far is nearing (80%) or past the per-cluster budget (an
    unknown cost is told as such by the manager, not here)."""
    if not cost or not limit or cost.get("accrued") is None:
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


# What of a VM's boot report (the scheduler's ``coiled_lab_lifetime`` answer, ``"boot"``) is
# kept in the cluster's state, and how much: the report comes from the cluster's own VM.
MAX_SKIPPED = 500
MAX_TEXT = 300


def _text(value: Any) -> str:
    line = str(value).strip().splitlines()[0] if str(value).strip() else ""
    return line if len(line) <= MAX_TEXT else line[: MAX_TEXT - 3] + "..."


def _seconds_value(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def boot_summary(boot: dict[str, Any]) -> dict[str, Any]:
    """The boot report in the shape the cluster's state keeps: ``python`` (the version
    installed), ``python_source``, ``phases`` ([{name, seconds}]), ``installed`` (a count)
    and ``skipped`` ([{requirement, reason}]); anything else, or of another type, left out.
    Lists may arrive as tuples: distributed's messages decode arrays so (msgpack)."""
    out: dict[str, Any] = {}
    for key in ("python", "python_source"):
        if isinstance(boot.get(key), str):
            out[key] = _text(boot[key])
    phases = boot.get("phases")
    if isinstance(phases, (list, tuple)):
        out["phases"] = [{"name": _text(p.get("name", "")), "seconds": float(p["seconds"])}
                         for p in phases[:50] if isinstance(p, dict) and _seconds_value(p.get("seconds"))]
    if isinstance(boot.get("installed"), int) and not isinstance(boot.get("installed"), bool):
        out["installed"] = boot["installed"]
    skipped = boot.get("skipped")
    if isinstance(skipped, (list, tuple)):
        out["skipped"] = [{"requirement": _text(s.get("requirement", "?")), "reason": _text(s.get("reason", ""))}
                          for s in skipped[:MAX_SKIPPED] if isinstance(s, dict)]
        if len(skipped) > MAX_SKIPPED:
            out["skipped_more"] = len(skipped) - MAX_SKIPPED
    return out


def skipped_packages(boot: Optional[dict[str, Any]]) -> list[Notice]:
    """The cluster's VMs could not install some requirements and run without them: one
    notification naming each and why (told once per cluster)."""
    skipped = (boot or {}).get("skipped") or []
    if not skipped:
        return []
    items = "; ".join(f"{s['requirement']} ({s['reason'] or 'no reason given'})" for s in skipped)
    more = (boot or {}).get("skipped_more")
    if more:
        items += f"; and {more} more"
    count = len(skipped) + (more or 0)
    python = (boot or {}).get("python")
    on = f" with Python {python}" if python else ""
    return [Notice(
        key="packages:skipped", kind="packages", level="warning",
        message=f"{count} requirement{'s' if count != 1 else ''} could not be installed on the cluster's "
                f"VMs{on} and {'were' if count != 1 else 'was'} skipped: {items}",
    )]
