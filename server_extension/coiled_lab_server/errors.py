"""How every error the API can raise becomes an HTTP answer: the one table.

Handlers never build error responses themselves; they raise, and the handler base class
asks :func:`http_status` and :func:`error_body`. Bad input is always a 4xx naming the
field; only a bug in this code answers 500.
"""

from __future__ import annotations

from typing import Any, Optional

from tornado.web import HTTPError

from coiled_lab.backends.aws.session import AWSError
from coiled_lab.backends.gcp.session import GCPError
from coiled_lab.control.limits import LimitExceeded
from coiled_lab.errors import Conflict, ManagerBusy, NotFound, Unavailable
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


class TooLarge(BadRequest):
    """A request body larger than the route reads (HTTP 413)."""


_STATUS: tuple[tuple[type[BaseException], int], ...] = (
    (LimitExceeded, 403),  # valid, but more than the admin allows
    (ClusterSpecError, 400),
    (TooLarge, 413),
    (BadRequest, 400),
    (NotFound, 404),
    (Conflict, 409),
    (AWSError, 409),  # the cloud is not set up for this (e.g. no network: run `coiled-lab setup aws`)
    (GCPError, 409),  # likewise on GCP (`coiled-lab setup gcp`), or no project named anywhere
    (ManagerBusy, 503),
    (Unavailable, 503),
)


def http_status(exc: Optional[BaseException]) -> Optional[int]:
    """The status for one of our exceptions; None for anything else (tornado decides)."""
    for kind, status in _STATUS:
        if isinstance(exc, kind):
            return status
    cloud = _cloud(exc)
    return cloud[0] if cloud else None


def _cloud(exc: Optional[BaseException]) -> Optional[tuple[int, str]]:
    """A cloud that cannot be used (no credentials, unreachable: 503) or that refused
    (502), with what to do about it. Not bad input, and not a bug of this server."""
    if exc is not None and type(exc).__module__.startswith(("google.", "requests.")):
        return _google(exc)
    if exc is None or not type(exc).__module__.startswith("botocore"):
        return None
    import botocore.exceptions as bx

    if isinstance(exc, (bx.NoCredentialsError, bx.PartialCredentialsError, bx.NoRegionError)):
        return 503, (f"the server has no usable AWS credentials ({exc}); set them in its environment or "
                     "profile, or PUT them to /coiled-lab/api/credentials")
    if isinstance(exc, (bx.EndpointConnectionError, bx.ConnectTimeoutError, bx.ReadTimeoutError)):
        return 503, f"AWS could not be reached from the server: {exc}"
    if isinstance(exc, bx.ClientError):
        return 502, f"AWS refused the request: {exc}"
    if isinstance(exc, bx.ResponseParserError):
        return 502, f"AWS answered something that is not an AWS answer: {exc}"
    return None


def _google(exc: BaseException) -> Optional[tuple[int, str]]:
    """The GCP side of :func:`_cloud`: google-auth, google-api-core and requests errors."""
    import requests
    from google.api_core import exceptions as gx
    from google.auth import exceptions as ax

    if isinstance(exc, (ax.DefaultCredentialsError, ax.RefreshError)):
        return 503, (f"the server has no usable GCP credentials ({exc}); run `gcloud auth application-default "
                     "login` or set GOOGLE_APPLICATION_CREDENTIALS for it, or PUT a service account key to "
                     "/coiled-lab/api/credentials")
    if isinstance(exc, (ax.TransportError, requests.ConnectionError, requests.Timeout, gx.ServiceUnavailable)):
        return 503, f"Google Cloud could not be reached from the server: {exc}"
    if isinstance(exc, gx.GoogleAPICallError):
        return 502, f"Google Cloud refused the request: {exc}"
    return None


def error_body(exc: Optional[BaseException], status: int) -> dict[str, Any]:
    """``{"error": ..., "field": ...}`` for any failure; a 500 says nothing about internals."""
    if isinstance(exc, (ClusterSpecError, BadRequest)):
        return exc.to_json()
    cloud = _cloud(exc)
    if cloud:
        return {"error": cloud[1], "field": None}
    if http_status(exc) is not None:
        field = "name_or_id" if isinstance(exc, NotFound) else None
        return {"error": str(exc), "field": field}
    if isinstance(exc, HTTPError) and status < 500:
        message = exc.log_message % exc.args if exc.log_message and exc.args else exc.log_message
        return {"error": message or exc.reason or f"HTTP {status}", "field": None}
    return {"error": f"HTTP {status}: the server failed; its log says why", "field": None}
