"""Scheduler plugin that keeps a short history of how a cluster is used.

Loaded with ``--preload coiled_lab.bootstrap.watchdog`` on every scheduler (local and
cloud). Every few seconds it samples workers, clients, running computations (task
prefixes: counts by state and time spent), per-worker CPU and memory and, on GPU workers,
GPU utilisation (distributed's NVML metrics). The manager reads it over the cluster's TLS
comms (the ``coiled_lab_usage`` handler); nothing is written anywhere else. Each metric
can be switched off (``coiled-lab.telemetry.*``, passed in ``COILED_LAB_TELEMETRY``).
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from collections import deque
from typing import Any, Optional

from distributed.diagnostics.plugin import SchedulerPlugin

METRICS = ("clients", "tasks", "cpu", "memory", "gpu")
RUNNING_STATES = ("processing", "queued", "waiting", "no-worker")


def environment(telemetry: dict[str, Any]) -> dict[str, str]:
    """The environment variable that carries ``coiled-lab.telemetry`` to the scheduler."""
    enabled = {m: bool(telemetry.get(m, True)) for m in METRICS}
    return {"COILED_LAB_TELEMETRY": json.dumps({"enabled": enabled, "interval": telemetry.get("interval", 5)})}


class Watchdog(SchedulerPlugin):
    name = "coiled-lab-watchdog"

    def __init__(self, enabled: Optional[dict[str, bool]] = None, interval: float = 5.0, keep: int = 720):
        self.enabled = {m: True for m in METRICS} | (enabled or {})
        self.interval = interval
        self.samples: deque[dict[str, Any]] = deque(maxlen=keep)  # an hour at 5 s
        self._task: Optional[asyncio.Task] = None

    async def start(self, scheduler) -> None:
        self.scheduler = scheduler
        scheduler.handlers["coiled_lab_usage"] = self.usage
        self._task = asyncio.create_task(self._sample_forever())

    async def close(self) -> None:
        if self._task:
            self._task.cancel()

    async def _sample_forever(self) -> None:
        while True:
            self.samples.append(self.sample())
            await asyncio.sleep(self.interval)

    def sample(self) -> dict[str, Any]:
        s = self.scheduler
        out: dict[str, Any] = {
            "time": time.time(),
            "workers": len(s.workers),
            "threads": s.total_nthreads,
            "idle_since": s.idle_since,
        }
        if self.enabled["clients"]:
            out["clients"] = sum(1 for c in s.clients if c != "fire-and-forget")
        if self.enabled["tasks"]:
            out["tasks"] = {
                name: {
                    "running": sum(prefix.states.get(state, 0) for state in RUNNING_STATES),
                    # Cumulative counts: tasks a client has since released still ran.
                    "done": prefix.state_counts.get("memory", 0),
                    "erred": prefix.state_counts.get("erred", 0),
                    "seconds": round(prefix.all_durations.get("compute", 0.0), 3),
                }
                for name, prefix in s.task_prefixes.items()
            }
        per_worker = {}
        for ws in s.workers.values():
            metrics = ws.metrics or {}
            entry: dict[str, Any] = {}
            if self.enabled["cpu"]:
                entry["cpu"] = metrics.get("cpu")
            if self.enabled["memory"]:
                entry["memory"] = metrics.get("memory")
                entry["memory_limit"] = ws.memory_limit
            if self.enabled["gpu"] and "gpu" in metrics:
                entry["gpu"] = (metrics["gpu"] or {}).get("utilization")
            per_worker[str(ws.name)] = entry
        out["per_worker"] = per_worker
        return out

    def usage(self, comm=None, since: Optional[float] = None) -> dict[str, Any]:
        """Samples after ``since`` (all when None), oldest first, and what is switched on."""
        samples = [x for x in self.samples if since is None or x["time"] > since]
        return {"enabled": dict(self.enabled), "interval": self.interval, "samples": samples}


def dask_setup(scheduler) -> None:
    settings = json.loads(os.environ.get("COILED_LAB_TELEMETRY") or "{}")
    scheduler.add_plugin(Watchdog(settings.get("enabled"), float(settings.get("interval", 5))))
