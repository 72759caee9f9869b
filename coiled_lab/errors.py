"""The errors of coiled-lab and the one table that says how every front door tells them.

:func:`answer` gives, for any exception, its HTTP status, CLI exit code, a ``code`` that
REST answers carry (so a client raises the same class again: a 403 over a limit is not a
refused token), and the one line a user reads. The server's handlers, the REST client, the
CLI and the magic all ask it; ``None`` means a bug, told as one line too (with the
traceback only under ``--debug``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

# CLI exit codes.
EXIT_FAILED = 1  # the cluster failed, or a bug
EXIT_USAGE = 2  # bad input
EXIT_CONFLICT = 3  # not now: a state, a busy or damaged store, a cloud or server that cannot be used
EXIT_NOT_FOUND = 4
EXIT_LIMIT = 5  # valid, but more than the admin allows
EXIT_INTERRUPTED = 130

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


class ClusterSpecError(ValueError):
    """A request that is not a valid cluster: names the field and what is allowed."""

    def __init__(self, message: str, field: str | None = None, errors: list[dict] | None = None):
        super().__init__(message)
        self.message = message
        self.field = field
        self.errors = errors or [{"field": field, "error": message}]

    def to_json(self) -> dict[str, Any]:
        """The body the REST API answers with (HTTP 400)."""
        return {"error": self.message, "field": self.field, "errors": self.errors}


class LimitExceeded(ClusterSpecError):
    """A valid request beyond what the admin allows (``coiled-lab.limits``)."""

    def __init__(self, field: Optional[str], limit: str, message: str, where: Optional[str] = None):
        """``limit`` is the key (``max-clusters``); ``where`` the entry that set it when it is
        a user's or a group's (``users.alice.max-clusters``), which the message names."""
        super().__init__(f"{field or 'request'}: {message} (limit coiled-lab.limits.{where or limit})", field)
        self.limit = limit

    def to_json(self) -> dict[str, Any]:
        return {**super().to_json(), "limit": self.limit}

    @classmethod
    def from_json(cls, body: dict[str, Any]) -> "LimitExceeded":
        """The same error again from its REST answer (a client of a server that refused)."""
        exc = cls.__new__(cls)
        ClusterSpecError.__init__(exc, body["error"], body.get("field"), body.get("errors"))
        exc.limit = body.get("limit") or ""
        return exc


class Forbidden(PermissionError):
    """A request this caller may not make at all, whatever it names: an admin's verb asked
    by a user who is not one (HTTP 403)."""


class UsageError(ValueError):
    """A command line that cannot be parsed; the message is one line for the user."""


class CloudSetupError(RuntimeError):
    """A cloud request that failed in a way the user must act on (the cloud is not set up
    for this: no network, run ``coiled-lab setup``; no project); the message says how.
    Each cloud backend's own error class derives from it."""


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


class SchedulerUnreachable(RuntimeError):
    """A change a live cluster's scheduler must take did not reach it; nothing changed (HTTP 504)."""


class ClusterError(RuntimeError):
    """The cluster ended in ``error``; the message says why."""


class BadRequest(ValueError):
    """Input that is not a cluster spec but is still wrong: a query string, a body that is
    not JSON, a credentials form, a ``--since``. Same shape as ``ClusterSpecError``."""

    def __init__(self, message: str, field: Optional[str]):
        super().__init__(message)
        self.message = message
        self.field = field

    def to_json(self) -> dict[str, Any]:
        return {"error": self.message, "field": self.field, "errors": [{"field": self.field, "error": self.message}]}


class TooLarge(BadRequest):
    """A request body larger than the route reads (HTTP 413)."""


class CloudProblem(RuntimeError):
    """The cloud cannot be used from the control plane (no credentials, unreachable: 503)
    or refused (502), as a REST client hears it; ``code`` says which."""

    def __init__(self, status: int, code: str, message: str):
        super().__init__(message)
        self.status = status
        self.code = code


class APIError(RuntimeError):
    """An answer with no control-plane meaning: refused token, server failure, or no server
    (``status`` 599)."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class Answer:
    """How one failure is told: HTTP status, CLI exit code, REST ``code``, the one line."""

    status: int
    exit: int
    code: str
    message: str


# The table: each error class, its HTTP status, CLI exit code and REST ``code``; the first
# class an exception is an instance of decides.
_TABLE: tuple[tuple[type[BaseException], int, int, str], ...] = (
    (LimitExceeded, 403, EXIT_LIMIT, "limit"),
    (ClusterSpecError, 400, EXIT_USAGE, "bad_input"),
    (TooLarge, 413, EXIT_USAGE, "too_large"),
    (BadRequest, 400, EXIT_USAGE, "bad_input"),
    (UsageError, 400, EXIT_USAGE, "bad_input"),
    (Forbidden, 403, EXIT_LIMIT, "forbidden"),
    (NotFound, 404, EXIT_NOT_FOUND, "not_found"),
    (Conflict, 409, EXIT_CONFLICT, "conflict"),
    (CloudSetupError, 409, EXIT_CONFLICT, "cloud_setup"),
    (ManagerBusy, 503, EXIT_CONFLICT, "busy"),
    (SchedulerUnreachable, 504, EXIT_CONFLICT, "scheduler_unreachable"),
    (Unavailable, 503, EXIT_CONFLICT, "unavailable"),
    (ClusterError, 409, EXIT_FAILED, "cluster_failed"),
)


def answer(exc: BaseException) -> Optional[Answer]:
    """How ``exc`` is told at every front door (:data:`_TABLE`); None for anything else (a bug)."""
    for kind, status, exit_code, code in _TABLE:
        if isinstance(exc, kind):
            return Answer(status, exit_code, code, getattr(exc, "message", None) or str(exc))
    if isinstance(exc, CloudProblem):
        return Answer(exc.status, EXIT_CONFLICT, exc.code, str(exc))
    if isinstance(exc, APIError):
        return Answer(exc.status, EXIT_CONFLICT if exc.status in (403, 599) else EXIT_FAILED, "server", str(exc))
    cloud = _cloud(exc)
    if cloud is not None:
        return Answer(cloud[0], EXIT_CONFLICT, cloud[1], cloud[2])
    return None


def _cloud(exc: BaseException) -> Optional[tuple[int, str, str]]:
    """A cloud that cannot be used (no credentials, unreachable: 503) or that refused
    (502): (status, code, what to do). Not bad input, and not a bug of coiled-lab."""
    module = type(exc).__module__
    if module.startswith(("google.", "requests.")):
        return _google(exc)
    if not module.startswith("botocore"):
        return None
    import botocore.exceptions as bx

    if isinstance(exc, (bx.NoCredentialsError, bx.PartialCredentialsError, bx.NoRegionError)):
        return 503, "no_credentials", (
            f"no usable AWS credentials ({exc}); set them in the environment or a profile of the machine that "
            "runs the control plane, or PUT them to /coiled-lab/api/credentials (the sidebar's credentials panel)")
    if isinstance(exc, (bx.EndpointConnectionError, bx.ConnectTimeoutError, bx.ReadTimeoutError)):
        return 503, "cloud_unreachable", f"AWS could not be reached: {exc}; check the network or the endpoint"
    if isinstance(exc, bx.ClientError):
        return 502, "cloud_refused", f"AWS refused the request: {exc}"
    if isinstance(exc, bx.ResponseParserError):
        return 502, "cloud_refused", f"AWS answered something that is not an AWS answer: {exc}"
    if isinstance(exc, bx.BotoCoreError):  # a profile, a config file: this machine's AWS setup
        return 503, "no_credentials", f"AWS cannot be used from here: {exc}"
    return None


def _google(exc: BaseException) -> Optional[tuple[int, str, str]]:
    """The GCP side of :func:`_cloud`: google-auth, google-api-core and requests errors."""
    import requests
    from google.api_core import exceptions as gx
    from google.auth import exceptions as ax

    if isinstance(exc, (ax.DefaultCredentialsError, ax.RefreshError)):
        return 503, "no_credentials", (
            f"no usable GCP credentials ({exc}); run `gcloud auth application-default login` or set "
            "GOOGLE_APPLICATION_CREDENTIALS for the control plane, or PUT a service account key to "
            "/coiled-lab/api/credentials")
    if isinstance(exc, (ax.TransportError, requests.ConnectionError, requests.Timeout, gx.ServiceUnavailable)):
        return 503, "cloud_unreachable", f"Google Cloud could not be reached: {exc}; check the network"
    if isinstance(exc, gx.GoogleAPICallError):
        return 502, "cloud_refused", f"Google Cloud refused the request: {exc}"
    if isinstance(exc, (ax.GoogleAuthError, gx.GoogleAPIError)):
        return 503, "no_credentials", f"Google Cloud cannot be used from here: {exc}"
    return None


def from_answer(status: int, body: Any, subject: Optional[str]) -> BaseException:
    """The exception a REST answer stands for: the class the server raised, by ``code``
    (older answers without one by status); :class:`APIError` for anything else."""
    ours = isinstance(body, dict) and isinstance(body.get("error"), str)
    if not ours:
        if status == 403:  # Jupyter's own refusal: a token that is not (or no longer) valid there
            return APIError(403, "the Jupyter server refused this client's token; restart the kernel from that "
                                 "server (or give COILED_LAB_API_TOKEN a token it accepts)")
        return APIError(status, f"HTTP {status} from the coiled-lab server; its log says why")
    message, code = body["error"], body.get("code")
    if code == "limit":
        return LimitExceeded.from_json(body)
    if code == "forbidden":
        return Forbidden(message)
    if code in ("bad_input", "too_large") or (code is None and status == 400):
        return ClusterSpecError(message, body.get("field"), body.get("errors"))
    if code == "not_found" or (code is None and status == 404 and subject is not None):
        return NotFound(subject) if subject is not None else APIError(status, message)
    if code in ("conflict", "cloud_setup") or (code is None and status == 409):
        return Conflict(message)
    if code == "busy" or (code is None and status == 503):
        return ManagerBusy(message)
    if code == "unavailable":
        return Unavailable(message)
    if code == "scheduler_unreachable":
        return SchedulerUnreachable(message)
    if code in ("no_credentials", "cloud_unreachable", "cloud_refused"):
        return CloudProblem(status, code, message)
    return APIError(status, message)
