"""An asyncio loop in a daemon thread: how the in-process control plane and the REST
client both serve synchronous code (the CLI, a script), the Cluster's own loop thread
and a notebook's running loop alike. It lives apart from both so that neither the
control plane nor a front door imports the other to get it."""

from __future__ import annotations

import asyncio
import contextvars
import threading
from concurrent.futures import Future
from typing import Awaitable, Optional, TypeVar

T = TypeVar("T")


class LoopThread:
    """An asyncio loop in a daemon thread, callable from any thread or loop."""

    def __init__(self, name: str = "coiled-lab-manager"):
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name=name, daemon=True)
        self._thread.start()

    def submit(self, coro: Awaitable[T]) -> Future:
        """Start ``coro`` on this loop; its result arrives in the returned future.

        Unlike ``asyncio.run_coroutine_threadsafe``, the task starts in an empty context,
        not in a copy of the caller's: background work (a widget following events) is not
        tied to the notebook cell that happened to start it, so IPython attributes what
        it sends to the cell running now, as it does for any thread a user starts.
        """
        result: Future = Future()

        def start() -> None:
            task = asyncio.ensure_future(coro)

            def done(t: asyncio.Future) -> None:
                if result.done():  # the caller cancelled it (and so this task) first
                    return
                if t.cancelled():
                    result.cancel()
                elif t.exception() is not None:
                    result.set_exception(t.exception())
                else:
                    result.set_result(t.result())

            task.add_done_callback(done)
            result.add_done_callback(lambda f: self.loop.call_soon_threadsafe(task.cancel) if f.cancelled() else None)

        self.loop.call_soon_threadsafe(start, context=contextvars.Context())
        return result

    def run(self, coro: Awaitable[T], timeout: Optional[float] = None) -> T:
        """Run to completion from synchronous code (never from this thread's own loop)."""
        return self.submit(coro).result(timeout)

    async def call(self, coro: Awaitable[T]) -> T:
        """Await from any running loop."""
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is self.loop:
            return await coro
        return await asyncio.wrap_future(self.submit(coro))

    def stop(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(5)
