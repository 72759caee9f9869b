"""Ship a VM's output to its CloudWatch Logs stream, in batches, from a background thread.

Runs on the VM (see :mod:`coiled_lab.bootstrap.vm`). It has no credentials of its own:
boto3 finds the instance role's through the metadata service.

Delivery, while the VM lives: every line is sent once, in the order written, unless the
buffer overflows. The buffer is bounded in lines *and* bytes, so an outage costs the
oldest lines beyond that cap (counted, and reported in the stream by a note once it
recovers), never the VM's memory. A batch respects PutLogEvents' limits (events in time
order, at most 10,000 events or ~1 MB); a batch that fails goes back to the front of
the buffer and is retried, after botocore's own retries, with a growing, jittered pause
(so a thousand VMs coming back from one outage do not retry in step). The one case that
can repeat lines: CloudWatch accepted a batch but the answer was lost on the way back;
PutLogEvents has no idempotency key (sequence tokens are gone), so that batch is sent
again (at least once rather than lost).
"""

from __future__ import annotations

import random
import threading
import time
from collections import deque
from typing import Any, Callable, Optional

# PutLogEvents limits: 10,000 events, 1,048,576 bytes counting 26 bytes per event, and
# 256 KiB per event.
MAX_BATCH_EVENTS = 10_000
MAX_BATCH_BYTES = 1_048_576
EVENT_OVERHEAD = 26
MAX_EVENT_BYTES = 256 * 1024 - EVENT_OVERHEAD


class LogShipper:
    """A thread that sends queued lines to one log stream every ``interval`` seconds.

    ``client_factory`` builds the CloudWatch Logs client when the thread first needs it,
    so lines can be queued before boto3 is importable (while packages install).
    """

    def __init__(
        self,
        client_factory: Callable[[], Any],
        group: str,
        stream: str,
        max_lines: int = 20_000,
        max_bytes: int = 16 * 1024 * 1024,
        interval: float = 1.0,
        max_backoff: float = 30.0,
    ):
        self.group = group
        self.stream = stream
        self.interval = interval
        self.max_backoff = max_backoff
        self._client_factory = client_factory
        self._client: Any = None
        self.max_lines = max_lines
        self.max_bytes = max_bytes
        self._queue: deque[tuple[int, str]] = deque()
        self._bytes = 0  # what the queued messages weigh, as PutLogEvents counts them
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._deadline: Optional[float] = None  # set by close(): stop once sent, or at this time
        self._stream_ready = False
        self._thread: Optional[threading.Thread] = None
        self._last_ms = 0
        self.dropped = 0  # since the last note about dropped lines
        self.dropped_total = 0
        self.sent = 0
        self.failures = 0  # batches that could not be sent (then retried)

    # -- producer side (any thread) ------------------------------------------------------
    def write(self, message: str, timestamp: Optional[float] = None) -> None:
        """Queue one line; never blocks. When full (lines or bytes), the oldest queued
        lines are dropped to make room."""
        ms = int((time.time() if timestamp is None else timestamp) * 1000)
        data = message.rstrip("\n").encode("utf-8", "replace")[:MAX_EVENT_BYTES].decode("utf-8", "ignore")
        with self._lock:
            # CloudWatch wants each batch in time order; a clock step backwards must not
            # reorder lines, so time stamps never decrease.
            ms = max(ms, self._last_ms)
            self._last_ms = ms
            data = data or " "
            cost = _cost(data)
            while self._queue and (len(self._queue) >= self.max_lines or self._bytes + cost > self.max_bytes):
                self._bytes -= _cost(self._queue.popleft()[1])
                self._count_dropped(1)
            self._queue.append((ms, data))
            self._bytes += cost

    def _count_dropped(self, lines: int) -> None:
        self.dropped += lines
        self.dropped_total += lines

    def start(self) -> "LogShipper":
        self._thread = threading.Thread(target=self._run, name="coiled-lab-logship", daemon=True)
        self._thread.start()
        return self

    def close(self, timeout: float = 10.0) -> None:
        """Send what is queued (trying for at most ``timeout`` seconds), then stop."""
        self._deadline = time.monotonic() + timeout
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout + self.max_backoff)

    # -- consumer side (the shipping thread) ---------------------------------------------
    def _take_batch(self) -> tuple[list[dict[str, Any]], int]:
        """The next batch, and how many dropped lines its first event reports (0: none)."""
        batch: list[dict[str, Any]] = []
        size = 0
        with self._lock:
            reported = self.dropped
            if reported:
                note = f"coiled-lab: {reported} log lines were dropped while CloudWatch was unreachable"
                first = self._queue[0][0] if self._queue else self._last_ms
                batch.append({"timestamp": first, "message": note})
                size += len(note) + EVENT_OVERHEAD
                self.dropped = 0
            while self._queue and len(batch) < MAX_BATCH_EVENTS:
                ms, message = self._queue[0]
                cost = _cost(message)
                if batch and (size + cost > MAX_BATCH_BYTES or ms - batch[0]["timestamp"] > 23 * 3600 * 1000):
                    break
                self._queue.popleft()
                self._bytes -= cost
                batch.append({"timestamp": ms, "message": message})
                size += cost
        return batch, reported

    def _put_back(self, batch: list[dict[str, Any]], reported: int) -> None:
        """A batch that could not be sent goes back to the front of the queue, as far as
        there is room (the rest counts as dropped, like the note about earlier drops)."""
        lines = batch[1:] if reported else batch
        with self._lock:
            room, weight, keep = self.max_lines - len(self._queue), self._bytes, 0
            # The newest lines of the batch come back first: older ones are dropped first.
            for event in reversed(lines):
                cost = _cost(event["message"])
                if keep >= room or weight + cost > self.max_bytes:
                    break
                weight += cost
                keep += 1
            kept = lines[len(lines) - keep:]
            self._queue.extendleft((e["timestamp"], e["message"]) for e in reversed(kept))
            self._bytes = weight
            self.dropped += reported  # the note goes again, with the count it had
            self._count_dropped(len(lines) - keep)

    def _send(self, batch: list[dict[str, Any]]) -> None:
        if self._client is None:
            self._client = self._client_factory()
        if not self._stream_ready:
            try:
                self._client.create_log_stream(logGroupName=self.group, logStreamName=self.stream)
            except self._client.exceptions.ResourceAlreadyExistsException:
                pass
            self._stream_ready = True
        self._client.put_log_events(logGroupName=self.group, logStreamName=self.stream, logEvents=batch)
        self.sent += len(batch)

    def _run(self) -> None:
        backoff = 0.0
        while True:
            batch, reported = self._take_batch()
            if batch:
                try:
                    self._send(batch)
                    backoff = 0.0
                    continue  # more may be queued: send it without waiting
                except Exception as exc:  # noqa: BLE001 - no network yet, a role not yet usable, ...
                    self._put_back(batch, reported)
                    self.failures += 1
                    if self._deadline is not None and time.monotonic() >= self._deadline:
                        return
                    backoff = min(max(2 * backoff, 0.5), self.max_backoff)
                    pause = random.uniform(backoff / 2, backoff)
                    print(f"coiled-lab: log shipping failed ({type(exc).__name__}: {exc}); retrying in {pause:.2g}s",
                          flush=True)
                    time.sleep(pause)
                    continue
            if self._deadline is not None:
                return
            self._wake.wait(self.interval)
            self._wake.clear()


def _cost(message: str) -> int:
    """What one event weighs against PutLogEvents' batch limit (and the buffer's cap)."""
    return len(message.encode()) + EVENT_OVERHEAD
