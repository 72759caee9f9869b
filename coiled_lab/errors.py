"""Errors every front door maps the same way (REST: 404, 409, 503; CLI: exit codes)."""

from __future__ import annotations


class NotFound(KeyError):
    """No cluster with that name or id (HTTP 404)."""

    def __str__(self) -> str:
        return f"no cluster named or with id {self.args[0]!r}"


class Conflict(RuntimeError):
    """A valid request that the cluster's current state does not allow (HTTP 409)."""


class ManagerBusy(RuntimeError):
    """Another process already manages this store (HTTP 503 / CLI exit 3)."""


class ClusterError(RuntimeError):
    """The cluster ended in ``error``; the message says why."""
