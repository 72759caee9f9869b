"""The manager's copy of a running cluster's usage samples.

The scheduler's watchdog (:mod:`coiled_lab.bootstrap.watchdog`) takes a sample every few
seconds. Everything that reads usage here (the sidebar and widgets polling
``/clusters/{id}/usage``, the usage plot, the GPU-idle notice) reads this copy instead of
asking the scheduler each time: a poll is answered from memory at once however many
clients poll and however slow the scheduler's machine is, and the copy is kept fresh by
at most one incremental read at a time (only the samples newer than the last one held).
Only the first read of a cluster waits for its scheduler.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from typing import Any, Awaitable, Callable, Optional

KEEP = 720  # samples: an hour at the watchdog's default 5 s, as much as it keeps itself


class UsageMirror:
    """``fetch(since)`` asks the scheduler at ``address`` for its samples after ``since``
    (all when None)."""

    def __init__(self, fetch: Callable[[Optional[float]], Awaitable[dict[str, Any]]], address: str,
                 keep: int = KEEP):
        self._fetch = fetch
        self.address = address
        self.samples: deque[dict[str, Any]] = deque(maxlen=keep)
        self.enabled: dict[str, bool] = {}
        self.interval: Optional[float] = None
        self.read_at: Optional[float] = None  # when the scheduler last answered (epoch seconds)
        self._reading: Optional[asyncio.Future] = None

    async def get(self, since: Optional[float] = None) -> dict[str, Any]:
        """The samples after ``since``. A copy older than one sampling interval is answered
        as it is while a read refreshes it for the next caller; with no copy yet, the
        caller waits for the first read and gets its error (the scheduler did not answer)."""
        if self.read_at is None:
            await self.refresh()
        elif time.time() - self.read_at >= (self.interval or 0):
            self._start()
        return {"enabled": dict(self.enabled), "interval": self.interval, "as_of": self.read_at,
                "samples": [s for s in self.samples if since is None or s["time"] > since]}

    async def refresh(self) -> None:
        """Read what is new (joining a read already under way)."""
        await asyncio.shield(self._start())

    def _start(self) -> asyncio.Future:
        if self._reading is None or self._reading.done():
            self._reading = asyncio.ensure_future(self._read())
            # A read nobody waits for may fail (the next one retries): not an unretrieved error.
            self._reading.add_done_callback(lambda done: done.cancelled() or done.exception())
        return self._reading

    async def _read(self) -> None:
        reply = await self._fetch(self.samples[-1]["time"] if self.samples else None)
        self.enabled, self.interval = reply["enabled"], reply["interval"]
        self.samples.extend(reply["samples"])
        self.read_at = time.time()
