"""Log records and log tailing, shared by every backend and every front door.

A backend answers one question, ``logs(cluster, since=...)``: the records after a time,
oldest first, in one cloud call (local files, one CloudWatch ``FilterLogEvents``, one
Cloud Logging ``entries.list``). Filtering and following live here, once.
"""

from __future__ import annotations

import asyncio
import math
import re
import time
from dataclasses import asdict, dataclass
from typing import Any, AsyncIterator, Awaitable, Callable, Iterable, Optional

from . import utc

LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")

# distributed's default format, its time in UTC marked Z as coiled-lab's processes write it
# (:mod:`coiled_lab.bootstrap.utclog`): "2026-11-23 19:49:52,123Z - distributed.worker - INFO - message".
# A stamp with another offset is read with it; one without any is UTC (:func:`coiled_lab.utc.parse`).
_DASK_LINE = re.compile(
    r"^(?P<ts>\d{4}-\d\d-\d\d[ T]\d\d:\d\d:\d\d(?:[,.]\d+)?(?:Z|[+-]\d\d:?\d\d)?)\s+-\s+(?P<logger>[\w.\-]+)"
    r"\s+-\s+(?P<level>[A-Z]+)\s+-\s+(?P<msg>.*)$"
)


@dataclass(frozen=True)
class LogRecord:
    time: float  # epoch seconds
    instance: str
    role: str
    level: str
    message: str

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    def format(self) -> str:
        return f"{utc.clock(self.time)} {self.role}-{self.instance} {self.level:<7} {self.message}"


def parse_lines(lines: Iterable[str], instance: str, role: str, fallback_time: float) -> list[LogRecord]:
    """Turn a process's output into records; lines without a time stamp (tracebacks,
    prints) take the time and level of the line before them."""
    out: list[LogRecord] = []
    last_time, last_level = fallback_time, "INFO"
    for raw in lines:
        line = raw.rstrip("\n")
        if not line:
            continue
        m = _DASK_LINE.match(line)
        if m:
            try:
                last_time = utc.parse(m["ts"])
            except ValueError:
                pass
            last_level = m["level"] if m["level"] in LEVELS else "INFO"
            message = f"{m['logger']} - {m['msg']}"
        else:
            message = line
        out.append(LogRecord(last_time, instance, role, last_level, message))
    return out


def matches(
    rec: LogRecord, instance: Optional[str] = None, q: Optional[str] = None, level: Optional[str] = None
) -> bool:
    """The one filter every log view applies: by instance (id or role), minimum level, text."""
    if instance and instance not in (rec.instance, rec.role, f"{rec.role}-{rec.instance}"):
        return False
    if level and level.upper() in LEVELS and LEVELS.index(rec.level) < LEVELS.index(level.upper()):
        return False
    if q and q.lower() not in rec.message.lower():
        return False
    return True


async def tail(
    fetch: Callable[[Optional[float]], Awaitable[list[LogRecord]]],
    since: Optional[float] = None,
    interval: float = 1.0,
    stop: Optional[Callable[[], bool]] = None,
) -> AsyncIterator[LogRecord]:
    """Follow logs by polling ``fetch(since)``; records sharing the boundary time stamp are
    not repeated. Ends when ``stop()`` turns true (after one last fetch)."""
    seen_at_boundary: set[tuple] = set()
    while True:
        finishing = bool(stop and stop())
        records = await fetch(since)
        for rec in records:
            key = (rec.time, rec.instance, rec.message)
            if since is not None and rec.time < since:
                continue
            if key in seen_at_boundary:
                continue
            if since is None or rec.time > since:
                since, seen_at_boundary = rec.time, set()
            seen_at_boundary.add(key)
            yield rec
        if finishing:
            return
        await asyncio.sleep(interval)


async def follow(
    control: Any,
    cluster_id: str,
    emit: Callable[[LogRecord], None],
    since: Optional[float] = None,
    interval: float = 1.0,
    **filters: Any,
) -> None:
    """Print a cluster's logs as they come (through any front door's control) until the
    cluster has stopped and its last lines are out."""
    done = asyncio.Event()
    record = await control.get(cluster_id)
    watcher = None
    if record["status"] in ("stopped", "error"):
        done.set()
    else:

        async def watch_end() -> None:
            await control.wait(cluster_id, ("stopped",))
            done.set()

        watcher = asyncio.ensure_future(watch_end())

    async def fetch(after: Optional[float]) -> list[LogRecord]:
        return [LogRecord(**r) for r in await control.logs(cluster_id, since=after, limit=None, **filters)]

    try:
        async for rec in tail(fetch, since=since, interval=interval, stop=done.is_set):
            emit(rec)
    finally:
        if watcher:
            watcher.cancel()


def since_from(value: Any) -> Optional[float]:
    """``since`` as given by a user: epoch seconds, an ISO time (UTC unless it names an
    offset, as the times logs show are), or a duration ago ('10m')."""
    if value in (None, ""):
        return None
    if isinstance(value, (int, float)) and math.isfinite(value):
        return float(value)
    text = str(value).strip()
    try:
        if math.isfinite(float(text)):
            return float(text)
    except ValueError:
        pass
    try:
        return utc.parse(text)
    except ValueError:
        pass
    from dask.utils import parse_timedelta

    try:
        return time.time() - parse_timedelta(text)
    except (ValueError, KeyError, OverflowError):
        from .errors import BadRequest, quoted

        raise BadRequest(f"since: {quoted(value)} is not a time; expected epoch seconds, an ISO time or a duration "
                         "like '10m'", "since") from None
