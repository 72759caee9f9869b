"""Cloud calls that never hold the process, and deadlines for answers someone waits for.

Every blocking cloud call (the AWS and GCP sessions' calls, price look-ups) runs through
:func:`blocking`: in a daemon thread of its own rather than in the loop's thread pool,
whose threads Python waits for at exit. A call that never returns (an endpoint that
accepts and never answers, retried for minutes) is then left behind when the process
ends: a Jupyter server stops promptly on SIGTERM, the CLI exits once it has printed.

A caller that must answer within seconds (an estimate, the form's type list, a cost
update) gives itself a :class:`Deadline` and waits for each step with :meth:`Deadline.wait`:
a step that has not answered by then goes on in the background (it may still fill a
cache for next time) while the caller answers with what it has, e.g. the price snapshot.
"""

from __future__ import annotations

import asyncio
import contextvars
import threading
import time
from contextlib import suppress
from typing import Any, Awaitable, Callable, Optional, TypeVar

T = TypeVar("T")


class DeadlinePassed(TimeoutError):
    """A step did not answer before its caller's deadline."""


def in_daemon_thread(fn: Callable[..., T], *args: Any, **kwargs: Any) -> "asyncio.Future[T]":
    """Start ``fn(*args, **kwargs)`` in a daemon thread now (with this context's variables);
    its outcome arrives in the returned future of the running loop."""
    loop = asyncio.get_running_loop()
    future: asyncio.Future = loop.create_future()
    context = contextvars.copy_context()

    def settle(result: Any, exc: Optional[BaseException]) -> None:
        if future.done():  # cancelled by its caller
            return
        if exc is None:
            future.set_result(result)
        else:
            future.set_exception(exc)

    def run() -> None:
        try:
            result, exc = context.run(fn, *args, **kwargs), None
        except BaseException as error:  # noqa: BLE001 - handed to the awaiting side
            result, exc = None, error
        with suppress(RuntimeError):  # the loop is closed: nobody waits any more
            loop.call_soon_threadsafe(settle, result, exc)

    threading.Thread(target=run, name=f"coiled-lab-{getattr(fn, '__name__', 'call')}", daemon=True).start()
    return future


async def blocking(fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """Run a blocking call off the event loop, in a daemon thread (:func:`in_daemon_thread`)."""
    return await in_daemon_thread(fn, *args, **kwargs)


class Deadline:
    """``seconds`` from now, shared by the steps of one answer."""

    def __init__(self, seconds: float):
        self.seconds = seconds
        self.end = time.monotonic() + seconds

    def left(self) -> float:
        return max(0.0, self.end - time.monotonic())

    async def wait(self, step: Awaitable[T], what: str) -> T:
        """``step``'s result, or :class:`DeadlinePassed` naming ``what`` when the deadline
        passes first; the step then goes on by itself (its late failure is not reported)."""
        task = asyncio.ensure_future(step)
        if not task.done():
            try:
                await asyncio.wait_for(asyncio.shield(task), self.left())
            except asyncio.TimeoutError:
                task.add_done_callback(lambda done: done.cancelled() or done.exception())
                raise DeadlinePassed(f"{what} did not answer within {self.seconds:g} s") from None
        return task.result()
