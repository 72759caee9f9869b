"""The manager's copy of a running cluster's usage samples.

The scheduler's watchdog (:mod:`coiled_lab.bootstrap.watchdog`) takes a sample every few
seconds. Everything that reads usage here (the sidebar and widgets polling
``/clusters/{id}/usage``, the usage plot, the GPU-idle notice) reads this copy instead of
asking the scheduler each time: a poll is answered from memory at once however many
clients poll and however slow the scheduler's machine is, and the copy is kept fresh by
at most one incremental read at a time (only the samples newer than the last one held).
A poll waits for a scheduler only for a cluster's first read, and not long.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from contextlib import suppress
from typing import Any, Awaitable, Callable, Optional

KEEP = 720  # samples: an hour at the watchdog's default 5 s, as much as it keeps itself
FIRST_WAIT = 1.0  # seconds a poll waits for a cluster's first read: a scheduler answers in ms


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
        self.failure: Optional[Exception] = None  # why the last read failed, if it did
        self._reading: Optional[asyncio.Future] = None
        self._first_read = 0.0  # when the first read began (monotonic)

    async def get(self, since: Optional[float] = None, wait: Optional[float] = FIRST_WAIT) -> dict[str, Any]:
        """The samples after ``since``, from the copy, at once: a copy older than one
        sampling interval starts a read that refreshes it for the next caller. Before the
        first read has answered, a caller waits for it until ``wait`` seconds after it began
        (None: until it ends), then gets no samples and ``as_of`` None: a slow scheduler
        holds up the polls of one second, not every poll. After a failed read, the copy
        and what failed (``error``), or with no copy that failure, raised at once."""
        if self.read_at is None and self.failure is None:
            reading = self._start()
            left = None if wait is None else wait - (time.monotonic() - self._first_read)
            if left is None or left > 0:
                with suppress(Exception):  # a timeout answers without samples; a failure is raised below
                    await asyncio.wait_for(asyncio.shield(reading), left)
        elif self.failure is not None or time.time() - self.read_at >= (self.interval or 0):
            self._start()
        if self.read_at is None and self.failure is not None:
            raise self.failure
        return {"enabled": dict(self.enabled), "interval": self.interval, "as_of": self.read_at,
                "error": str(self.failure) if self.failure else None,
                "samples": [s for s in self.samples if since is None or s["time"] > since]}

    async def refresh(self) -> None:
        """Read what is new (joining a read already under way); raise what failed."""
        await asyncio.shield(self._start())

    def _start(self) -> asyncio.Future:
        if self._reading is None or self._reading.done():
            if self._reading is None:
                self._first_read = time.monotonic()
            self._reading = asyncio.ensure_future(self._read())
            # A read nobody waits for may fail (the next one retries): not an unretrieved error.
            self._reading.add_done_callback(lambda done: done.cancelled() or done.exception())
        return self._reading

    async def _read(self) -> None:
        try:
            reply = await self._fetch(self.samples[-1]["time"] if self.samples else None)
        except Exception as exc:
            self.failure = exc
            raise
        self.enabled, self.interval, self.failure = reply["enabled"], reply["interval"], None
        self.samples.extend(reply["samples"])
        self.read_at = time.time()
