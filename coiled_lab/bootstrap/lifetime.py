"""Scheduler preload that enforces a cluster's timeouts where the cluster runs.

Loaded with ``--preload coiled_lab.bootstrap.lifetime``. It closes the scheduler (which
closes its workers; on a VM the bootstrap then shuts the machine down) after
``idle_timeout`` with no work, ``no_client_timeout`` after the last client left, or at
``max_lifetime``, so no cluster outlives its purpose even when the Jupyter server that
made it is gone. The manager reads the same clocks through the ``coiled_lab_lifetime``
scheduler handler to show the time left; on a cloud VM the handler's answer also carries
the VM's boot report (``"boot"``: ``boot-report.json``, whose path the bootstrap gives in
``COILED_LAB_BOOT_REPORT``; see :mod:`coiled_lab.bootstrap.vm`), None elsewhere.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import time
from typing import Any, Optional

from distributed.diagnostics.plugin import SchedulerPlugin

logger = logging.getLogger("distributed.coiled_lab.lifetime")

STOP_MARKER = "coiled-lab: stopping cluster:"
_FIELDS = ("idle_timeout", "no_client_timeout", "max_lifetime")


def environment(cluster_id: str, spec: Any) -> dict[str, str]:
    """The environment variables that configure this preload for one cluster."""
    env = {"COILED_LAB_CLUSTER_ID": cluster_id}
    for field in _FIELDS:
        value = getattr(spec, field)
        if value:
            env[f"COILED_LAB_{field.upper()}"] = str(value)
    return env


CLOCKS = ("started_at", "idle_since", "clients", "last_client_at", "timeouts")


def time_left(clocks: dict[str, Any], now: Optional[float] = None) -> dict[str, Optional[float]]:
    """Seconds left on each timeout given the scheduler's clocks; None where it is off or
    not counting (not idle; a client connected; no client ever connected)."""
    now = time.time() if now is None else now
    t = clocks["timeouts"]
    idle_since, last_client = clocks.get("idle_since"), clocks.get("last_client_at")
    return {
        "idle_timeout": idle_since + t["idle_timeout"] - now if t.get("idle_timeout") and idle_since else None,
        "no_client_timeout": (
            last_client + t["no_client_timeout"] - now
            if t.get("no_client_timeout") and last_client and not clocks.get("clients")
            else None
        ),
        "max_lifetime": clocks["started_at"] + t["max_lifetime"] - now if t.get("max_lifetime") else None,
    }


_BOOT: dict[str, Any] = {}  # the report last read, and the (path, mtime, size) it was read at


def boot_report(path: Optional[str] = None) -> Optional[dict[str, Any]]:
    """The VM's boot report (``COILED_LAB_BOOT_REPORT``), read again only when the file
    changed; None without one (a local cluster) or when it cannot be read."""
    path = path if path is not None else os.environ.get("COILED_LAB_BOOT_REPORT")
    if not path:
        return None
    try:
        stat = os.stat(path)
        key = (path, stat.st_mtime_ns, stat.st_size)
        if _BOOT.get("key") != key:
            with open(path) as f:
                _BOOT.update(key=key, value=json.load(f))
        return _BOOT["value"]
    except (OSError, ValueError):
        return None


def _env_seconds(field: str) -> Optional[float]:
    value = os.environ.get(f"COILED_LAB_{field.upper()}")
    return float(value) if value else None


class Lifetime(SchedulerPlugin):
    name = "coiled-lab-lifetime"

    def __init__(
        self,
        idle_timeout: Optional[float] = None,
        no_client_timeout: Optional[float] = None,
        max_lifetime: Optional[float] = None,
        interval: float = 1.0,
    ):
        self.timeouts = {
            "idle_timeout": idle_timeout,
            "no_client_timeout": no_client_timeout,
            "max_lifetime": max_lifetime,
        }
        self.interval = interval
        self.started_at = time.time()
        self.last_client_at: Optional[float] = None  # None until a first client connects
        self.stop_reason: Optional[str] = None
        self._task: Optional[asyncio.Task] = None
        self._closing: Optional[asyncio.Future] = None

    async def start(self, scheduler) -> None:
        self.scheduler = scheduler
        scheduler.handlers["coiled_lab_lifetime"] = self.status
        scheduler.handlers["coiled_lab_set_timeouts"] = self.set_timeouts
        self._task = asyncio.create_task(self._watch())

    async def close(self) -> None:
        if self._task:
            self._task.cancel()

    def set_timeouts(self, comm=None, timeouts: Optional[dict[str, Optional[float]]] = None) -> dict[str, Any]:
        """Change timeouts on the running cluster (the manager's PATCH)."""
        for field, value in (timeouts or {}).items():
            if field in self.timeouts:
                self.timeouts[field] = float(value) if value else None
        return self.status()

    def add_client(self, scheduler, client: str) -> None:
        self.last_client_at = time.time()

    def remove_client(self, scheduler, client: str) -> None:
        # The no-client clock starts when the last client leaves.
        self.last_client_at = time.time()

    def _clients(self) -> int:
        return sum(1 for c in self.scheduler.clients if c != "fire-and-forget")

    def status(self, comm=None) -> dict[str, Any]:
        """The clocks (epoch seconds), the time left on each timeout, and the VM's boot report."""
        now = time.time()
        clients = self._clients()
        clocks = {
            "started_at": self.started_at,
            "idle_since": self.scheduler.idle_since,
            "clients": clients,
            "last_client_at": self.last_client_at,
            "timeouts": dict(self.timeouts),
        }
        return {**clocks, "time_left": time_left(clocks, now), "stop_reason": self.stop_reason,
                "boot": boot_report()}

    async def _watch(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            status = self.status()
            for field, left in status["time_left"].items():
                if left is not None and left <= 0:
                    self.stop_reason = f"{field} of {self.timeouts[field]:g}s reached"
                    logger.warning("%s %s", STOP_MARKER, self.stop_reason)
                    # Close from a task of its own: scheduler.close() closes this plugin,
                    # which cancels this watcher.
                    self._closing = asyncio.ensure_future(self.scheduler.close(reason=f"coiled-lab {field}"))
                    return


def dask_setup(scheduler) -> None:
    plugin = Lifetime(**{field: _env_seconds(field) for field in _FIELDS})
    scheduler.add_plugin(plugin)
