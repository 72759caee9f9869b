"""What the REST API, the events and every front door see of a cluster record: its JSON.

One function makes it (:func:`cluster_json`); :class:`ListCache` keeps the list every UI
polls cheap: a stopped cluster's JSON never changes, so it is encoded once and reused
until its row does.
"""

from __future__ import annotations

import json
from typing import Any, Callable, Iterable, Optional

from ..bootstrap.lifetime import time_left
from ..pricing import extrapolate
from .states import FINAL, Target
from .store import ClusterRecord


def cluster_json(rec: ClusterRecord) -> dict[str, Any]:
    """The record as the UIs see it: worker counts, address, dashboard, time left and cost
    (extrapolated to now while it runs); backend-internal ids stay on the server."""
    d = rec.to_json()
    observed = rec.state.get("observed", {}) if rec.live else {}
    d["workers"] = {
        "target": rec.spec["n_workers"],
        "launched": observed.get("launched", 0),
        "ready": observed.get("ready", 0),
    }
    d["scheduler_address"] = rec.state.get("address") if rec.live else None
    # A cluster asked to stop has no dashboard any more: its scheduler goes at any moment,
    # and a pane pointed at it would poll a dead URL.
    d["dashboard"] = rec.state.get("dashboard") if rec.live and rec.target != Target.stopped else None
    d["time_left"] = left(observed.get("lifetime") if rec.live else None)
    d["cost"] = extrapolate(rec.state.get("cost")) if rec.live else rec.state.get("cost")
    d.pop("state", None)
    return d


def left(clocks: Optional[dict[str, Any]]) -> Optional[dict[str, Optional[float]]]:
    """Seconds left on each timeout from a scheduler's clocks; None when unknown (no clocks
    yet, or clocks a scheduler sent malformed)."""
    if not clocks:
        return None
    try:
        return time_left(clocks)
    except (KeyError, TypeError, AttributeError):
        return None


class ListCache:
    """The cluster list already encoded as a JSON array, for the REST API."""

    def __init__(self) -> None:
        self._encoded: dict[str, tuple[float, str]] = {}  # stopped clusters' JSON, by updated_at

    def encode(self, versions: list[tuple[str, float, str]],
               fetch: Callable[[list[str]], Iterable[ClusterRecord]]) -> str:
        """``versions``: (id, updated_at, status) of each cluster to list, in order;
        ``fetch(ids)`` reads the records whose JSON is not kept."""
        wanted = [cid for cid, updated, status in versions
                  if status not in FINAL or self._encoded.get(cid, (None,))[0] != updated]
        fresh: dict[str, str] = {}
        for rec in fetch(wanted):
            text = json.dumps(cluster_json(rec))
            if rec.status in FINAL:
                self._encoded[rec.id] = (rec.updated_at, text)
            else:
                self._encoded.pop(rec.id, None)
                fresh[rec.id] = text
        return "[" + ",".join(fresh[cid] if cid in fresh else self._encoded[cid][1] for cid, _, _ in versions) + "]"
