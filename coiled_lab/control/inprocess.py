"""The control plane in this process, for scripts and CI jobs with no Jupyter server.

One :class:`ClusterManager` per process runs on its own event loop in a daemon thread,
so it works the same whether it is called from synchronous code (the CLI, a script),
from the Cluster's own loop thread, or from a notebook's running loop.
"""

from __future__ import annotations

import threading
from typing import Any, AsyncIterator, Awaitable, Optional, TypeVar

from ..loopthread import LoopThread
from .events import Event
from .manager import ClusterManager

T = TypeVar("T")


class InProcessControl:
    """The front doors' view of a manager running in this process.

    Its async methods are the same as those of :class:`coiled_lab.api.APIClient`, so
    ``Cluster``, the magic and the CLI do not care which one they hold.
    """

    _shared: Optional["InProcessControl"] = None
    _shared_lock = threading.Lock()

    def __init__(self, manager: Optional[ClusterManager] = None):
        self.thread = LoopThread()
        self.manager = manager or ClusterManager()
        self.thread.run(self.manager.start(readonly_ok=True))

    @classmethod
    def shared(cls) -> "InProcessControl":
        with cls._shared_lock:
            if cls._shared is None:
                cls._shared = cls()
            return cls._shared

    @classmethod
    def reset_shared(cls) -> None:
        """Close the shared manager (clusters keep running); mostly for tests."""
        with cls._shared_lock:
            if cls._shared is not None:
                cls._shared.close()
                cls._shared = None

    def close(self) -> None:
        self.thread.run(self.manager.close())
        self.thread.stop()

    def run(self, coro: Awaitable[T], timeout: Optional[float] = None) -> T:
        """Run one of this control's coroutines from synchronous code."""
        return self.thread.run(coro, timeout)

    @property
    def server_url(self) -> Optional[str]:
        return None

    # -- the Control surface ---------------------------------------------------------
    async def create(self, spec: dict[str, Any], environment: Any = None) -> dict[str, Any]:
        return await self.thread.call(self.manager.create(spec, environment))

    async def stage_environment(self, environment: dict[str, Any]) -> dict[str, Any]:
        return self.manager.stage_environment(environment)

    async def environment(self, env_hash: str, backend: str, region: Optional[str] = None) -> dict[str, Any]:
        return await self.thread.call(self.manager.environment_built(env_hash, backend, region))

    async def get(self, name_or_id: str) -> dict[str, Any]:
        return await self.thread.call(self.manager.get(name_or_id))

    async def list(self, live_only: bool = False) -> list[dict[str, Any]]:
        return await self.thread.call(self.manager.list(live_only))

    async def scale(self, name_or_id: str, n_workers: int) -> dict[str, Any]:
        return await self.thread.call(self.manager.scale(name_or_id, n_workers))

    async def adapt(self, name_or_id: str, bounds: Optional[list[int]]) -> dict[str, Any]:
        return await self.thread.call(self.manager.update(name_or_id, {"adaptive": bounds}))

    async def stop(self, name_or_id: str) -> dict[str, Any]:
        return await self.thread.call(self.manager.stop(name_or_id))

    async def wait(self, name_or_id: str, states=("running",), timeout: Optional[float] = None) -> dict[str, Any]:
        return await self.thread.call(self.manager.wait(name_or_id, tuple(states), timeout))

    async def logs(self, name_or_id: str, **kwargs: Any) -> list[dict[str, Any]]:
        return await self.thread.call(self.manager.logs(name_or_id, **kwargs))

    async def connection(self, name_or_id: str) -> dict[str, Any]:
        return await self.thread.call(self.manager.connection(name_or_id))

    async def catalog(self, backend: Optional[str] = None, region: Optional[str] = None) -> dict[str, Any]:
        return await self.thread.call(self.manager.catalog(backend, region))

    async def estimate(self, spec: dict[str, Any]) -> dict[str, Any]:
        return await self.thread.call(self.manager.estimate(spec))

    async def schema(self, backend: Optional[str] = None) -> dict[str, Any]:
        from ..schema import form_schema
        from .callers import LOCAL
        from .limits import for_forms

        return form_schema(backend, for_forms(LOCAL))

    async def notifications(self, name_or_id: str) -> list[dict[str, Any]]:
        return await self.thread.call(self.manager.notifications(name_or_id))

    async def usage(self, name_or_id: str, since: Optional[float] = None) -> dict[str, Any]:
        return await self.thread.call(self.manager.usage(name_or_id, since))

    async def cleanup(self, dry_run: bool = False) -> dict[str, Any]:
        return await self.thread.call(self.manager.cleanup(dry_run))

    async def events(self, cluster_id: Optional[str] = None) -> AsyncIterator[Event]:
        sub = await self.thread.call(_subscribe(self.manager, cluster_id))
        try:
            while True:
                event = await self.thread.call(sub.get())
                if event is None:
                    return
                yield event
        finally:
            self.thread.loop.call_soon_threadsafe(sub.close)

    def dashboard_url(self, cluster: dict[str, Any]) -> Optional[str]:
        link = cluster.get("dashboard")
        return f"{link}/status" if link else None


async def _subscribe(manager: ClusterManager, cluster_id: Optional[str]):
    return manager.subscribe(cluster_id)
