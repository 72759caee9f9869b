"""Errors every front door maps the same way (REST: 404, 409, 503; CLI: exit codes)."""

from __future__ import annotations

from typing import Any

QUOTED_CHARS = 40  # how much of a refused value an error message repeats


def quoted(value: Any) -> str:
    """``repr(value)`` for an error message, cut to a short prefix: a refused value may be
    megabytes long, and an answer must never be a copy of its request."""
    text = repr(value)
    if len(text) <= QUOTED_CHARS:
        return text
    if isinstance(value, (str, bytes)):
        size = f"{len(value)} characters"
    else:
        size = f"{len(value)} items" if isinstance(value, (list, dict, tuple)) else f"{len(text)} characters"
    return f"{text[:QUOTED_CHARS]}… ({size})"


class NotFound(KeyError):
    """No cluster with that name or id (HTTP 404)."""

    def __str__(self) -> str:
        return f"no cluster named or with id {quoted(self.args[0])}"


class Conflict(RuntimeError):
    """A valid request that the cluster's current state does not allow (HTTP 409)."""


class ManagerBusy(RuntimeError):
    """Another process already manages this store (HTTP 503 / CLI exit 3)."""


class Unavailable(RuntimeError):
    """The control plane cannot run in this server at all; the message names the cause
    and the fix (HTTP 503 on every coiled-lab route)."""


class StoreUnavailable(Unavailable):
    """The store cannot be used: it is damaged, or its disk is full or read-only. The
    message names the file, the cause and the fix (HTTP 503 / CLI exit 3)."""


class StoreDamaged(StoreUnavailable):
    """The store is missing, empty or unreadable although it existed: its backup can be
    put back (``coiled-lab store restore``)."""


class ClusterError(RuntimeError):
    """The cluster ended in ``error``; the message says why."""
