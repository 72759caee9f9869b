"""How every error the API can raise becomes an HTTP answer: the one table.

Handlers never build error responses themselves; they raise, and the handler base class
asks :func:`http_status` and :func:`error_body`. Bad input is always a 4xx naming the
field; only a bug in this code answers 500.
"""

from __future__ import annotations

from typing import Any, Optional

from tornado.web import HTTPError

from coiled_lab.control.limits import LimitExceeded
from coiled_lab.errors import Conflict, ManagerBusy, NotFound
from coiled_lab.spec import ClusterSpecError


class BadRequest(ValueError):
    """Input that is not a cluster spec but is still wrong: a query string, a body that is
    not JSON, a credentials form. Same shape as :class:`ClusterSpecError`."""

    def __init__(self, message: str, field: Optional[str]):
        super().__init__(message)
        self.message = message
        self.field = field

    def to_json(self) -> dict[str, Any]:
        return {"error": self.message, "field": self.field, "errors": [{"field": self.field, "error": self.message}]}


_STATUS: tuple[tuple[type[BaseException], int], ...] = (
    (LimitExceeded, 403),  # valid, but more than the admin allows
    (ClusterSpecError, 400),
    (BadRequest, 400),
    (NotFound, 404),
    (Conflict, 409),
    (ManagerBusy, 503),
)


def http_status(exc: Optional[BaseException]) -> Optional[int]:
    """The status for one of our exceptions; None for anything else (tornado decides)."""
    for kind, status in _STATUS:
        if isinstance(exc, kind):
            return status
    return None


def error_body(exc: Optional[BaseException], status: int) -> dict[str, Any]:
    """``{"error": ..., "field": ...}`` for any failure; a 500 says nothing about internals."""
    if isinstance(exc, (ClusterSpecError, BadRequest)):
        return exc.to_json()
    if http_status(exc) is not None:
        field = "name_or_id" if isinstance(exc, NotFound) else None
        return {"error": str(exc), "field": field}
    if isinstance(exc, HTTPError) and status < 500:
        message = exc.log_message % exc.args if exc.log_message and exc.args else exc.log_message
        return {"error": message or exc.reason or f"HTTP {status}", "field": None}
    return {"error": f"HTTP {status}: the server failed; its log says why", "field": None}
