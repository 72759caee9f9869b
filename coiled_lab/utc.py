"""Times in coiled-lab: epoch seconds inside, UTC text at the edges.

Every time coiled-lab keeps, compares or sends is seconds since the epoch, which has no
zone. Text appears only at the edges: a log line's stamp, a ``--since`` a user typed, a time
a cloud API answered, a time shown to a user. There it is UTC: a text time without an offset
is read as UTC (what cloud VMs and coiled-lab's own dask processes write, see
:mod:`coiled_lab.bootstrap.utclog`), never as the reading machine's local time, and a time
shown carries ``Z``. So a server in Los Angeles reads a VM's log exactly as one in London does.
"""

from __future__ import annotations

import re
from datetime import datetime, timedelta, timezone

_OFFSET = re.compile(r"(?:Z|(?P<sign>[+-])(?P<hours>\d\d):?(?P<minutes>\d\d))$", re.IGNORECASE)


def parse(text: str) -> float:
    """An ISO 8601 time (``2026-11-23 19:49:52,123Z``, ``2026-11-23T11:49:52-08:00``,
    ``2026-11-23T19:49``) as epoch seconds; without an offset it is UTC. ValueError if it
    is not such a time. Offsets are taken apart here, not by :meth:`datetime.fromisoformat`,
    which before Python 3.11 knows neither ``Z`` nor ``+0000``."""
    body = text.strip().replace(",", ".")
    zone = timezone.utc
    found = _OFFSET.search(body)
    if found:
        body = body[:found.start()]
        if found["sign"]:
            offset = timedelta(hours=int(found["hours"]), minutes=int(found["minutes"]))
            zone = timezone(-offset if found["sign"] == "-" else offset)
    when = datetime.fromisoformat(body)
    return (when if when.tzinfo else when.replace(tzinfo=zone)).timestamp()


def clock(t: float) -> str:
    """The time of day, to the millisecond, for a log line: ``19:49:52.123Z``."""
    return datetime.fromtimestamp(t, timezone.utc).strftime("%H:%M:%S.%f")[:-3] + "Z"


def stamp(t: float) -> str:
    """Date and time, to the second: ``2026-11-23 19:49:52Z``."""
    return datetime.fromtimestamp(t, timezone.utc).strftime("%Y-%m-%d %H:%M:%SZ")
