"""Events: what every front door (sidebar, widget, magic, CLI) watches.

Kinds: ``state`` (a transition, with ``status`` and ``message``), ``progress``
(``step`` of network/scheduler/workers, ``ready``/``target``), ``log``, ``cost`` and
``notification`` (``kind``, ``level``, ``message``). State, progress and notification
events are persisted in the store with a sequence number, so a
subscriber that reconnects can ask for what it missed (``after=seq``); log and cost
events are live only.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import asdict, dataclass, field
from typing import Any, AsyncIterator, Callable, Optional

PERSISTED = frozenset({"state", "progress", "notification"})


@dataclass
class Event:
    cluster_id: str
    kind: str
    data: dict[str, Any]
    time: float = field(default_factory=time.time)
    seq: Optional[int] = None

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> "Event":
        return cls(cluster_id=d["cluster_id"], kind=d["kind"], data=d["data"], time=d["time"], seq=d.get("seq"))


class Subscription:
    """A bounded queue of events for one subscriber; a subscriber too slow to keep up
    loses the oldest events rather than slowing down everyone else (it can re-read
    persisted ones from the store by sequence number)."""

    def __init__(self, bus: "EventBus", cluster_id: Optional[str], kinds: Optional[set[str]], maxsize: int,
                 visible: Optional[Callable[[str], bool]] = None):
        self._bus = bus
        self.cluster_id = cluster_id
        self.kinds = kinds
        self.visible = visible  # whether the subscriber may see a cluster's events (team mode); None: all
        self.queue: asyncio.Queue[Optional[Event]] = asyncio.Queue(maxsize)
        self.dropped = 0

    def wants(self, event: Event) -> bool:
        return (self.cluster_id is None or event.cluster_id == self.cluster_id) and (
            self.kinds is None or event.kind in self.kinds
        ) and (self.visible is None or self.visible(event.cluster_id))

    def put(self, event: Optional[Event]) -> None:
        while True:
            try:
                self.queue.put_nowait(event)
                return
            except asyncio.QueueFull:
                self.queue.get_nowait()
                self.dropped += 1

    async def get(self) -> Optional[Event]:
        return await self.queue.get()

    def close(self) -> None:
        self._bus._subs.discard(self)
        self.put(None)

    def __aiter__(self) -> AsyncIterator[Event]:
        return self._iter()

    async def _iter(self) -> AsyncIterator[Event]:
        try:
            while True:
                event = await self.queue.get()
                if event is None:
                    return
                yield event
        finally:
            self._bus._subs.discard(self)


class EventBus:
    """In-process fan-out. Publishing never awaits: it must be safe from any coroutine."""

    def __init__(self) -> None:
        self._subs: set[Subscription] = set()

    def publish(self, event: Event) -> None:
        for sub in list(self._subs):
            if sub.wants(event):
                sub.put(event)

    def subscribe(
        self, cluster_id: Optional[str] = None, kinds: Optional[set[str]] = None, maxsize: int = 1000,
        visible: Optional[Callable[[str], bool]] = None,
    ) -> Subscription:
        """``visible(cluster_id)``: whether this subscriber may see that cluster's events,
        asked before an event is queued (so other users' events never fill its queue)."""
        sub = Subscription(self, cluster_id, kinds, maxsize, visible)
        self._subs.add(sub)
        return sub

    def close(self) -> None:
        for sub in list(self._subs):
            sub.close()
