"""How every error the API can raise becomes an HTTP answer, from the one table
(:func:`coiled_lab.errors.answer`).

Handlers never build error responses themselves; they raise, and the handler base class
asks :func:`http_status` and :func:`error_body`. Bad input is always a 4xx naming the
field; only a bug in this code answers 500. Every answer of ours carries ``code``, so a
client raises the same class again.
"""

from __future__ import annotations

from typing import Any, Optional

from tornado.web import HTTPError

from coiled_lab.errors import BadRequest, NotFound, TooLarge, answer

__all__ = ["BadRequest", "TooLarge", "error_body", "http_status"]


def http_status(exc: Optional[BaseException]) -> Optional[int]:
    """The status for one of our exceptions; None for anything else (tornado decides)."""
    told = answer(exc) if exc is not None else None
    return told.status if told else None


def error_body(exc: Optional[BaseException], status: int) -> dict[str, Any]:
    """``{"error": ..., "field": ..., "code": ...}`` for any failure; a 500 says nothing about internals."""
    told = answer(exc) if exc is not None else None
    if told is not None:
        to_json = getattr(exc, "to_json", None)
        body = to_json() if callable(to_json) else {
            "error": told.message, "field": "name_or_id" if isinstance(exc, NotFound) else None}
        return {**body, "code": told.code}
    if isinstance(exc, HTTPError) and status != 500:  # raised on purpose, with its message (a 502 too)
        message = exc.log_message % exc.args if exc.log_message and exc.args else exc.log_message
        return {"error": message or exc.reason or f"HTTP {status}", "field": None}
    return {"error": f"HTTP {status}: the server failed; its log says why", "field": None}
