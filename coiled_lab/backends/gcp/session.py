"""Google Cloud for the GCP backend: one set of credentials, REST clients, calls off the loop.

Compute Engine goes through ``google-cloud-compute``'s clients with the REST transport,
Cloud Logging through ``google-cloud-logging``'s HTTP client, and the services neither
package covers (IAM, Resource Manager, Compute's batch endpoint) through
``google.auth.transport.requests.AuthorizedSession``. Each is pointed at
``coiled-lab.gcp.endpoints.<service>`` when set (the tests' local fake), else Google's;
Cloud Storage, as Google's own libraries do, at ``STORAGE_EMULATOR_HOST`` when that is set.

Every call runs in a daemon thread (:meth:`GCPSession.call`, :mod:`coiled_lab.deadline`:
one that hangs never holds the process at exit) so the manager's event loop never waits
on the network, and is retried on throttling (429) and transient server
errors (500/502/503) with a growing pause, so no call site retries by hand. Credentials
are the ones given (what the Jupyter server stores) or Application Default Credentials;
the google packages are imported on first use.
"""

from __future__ import annotations

import os
import threading
from typing import Any, Callable, Optional

from ... import config, deadline
from ...errors import CloudSetupError

SCOPES = ["https://www.googleapis.com/auth/cloud-platform"]
DEFAULT_ENDPOINTS = {
    "compute": "https://compute.googleapis.com",
    "logging": "https://logging.googleapis.com",
    "iam": "https://iam.googleapis.com",
    "resourcemanager": "https://cloudresourcemanager.googleapis.com",
    "storage": "https://storage.googleapis.com",
}
STORAGE_EMULATOR_ENV = "STORAGE_EMULATOR_HOST"  # ``host:port`` or a URL, as google-cloud-storage reads it


class GCPError(CloudSetupError):
    """A Google Cloud request that failed in a way the user must act on; the message says how."""


def is_not_found(exc: BaseException) -> bool:
    return getattr(exc, "code", None) == 404


def is_conflict(exc: BaseException) -> bool:
    return getattr(exc, "code", None) == 409


def _retry():
    from google.api_core import exceptions, retry

    return retry.Retry(
        predicate=retry.if_exception_type(exceptions.TooManyRequests, exceptions.InternalServerError,
                                          exceptions.BadGateway, exceptions.ServiceUnavailable),
        initial=0.2, maximum=5.0, multiplier=2.0, timeout=float(config.get("gcp.retry-timeout")),
    )


class GCPSession:
    """Clients on one set of credentials. ``credentials``: google.auth credentials (the
    Jupyter server passes the service account an admin stored); None: ADC."""

    def __init__(self, credentials: Any = None):
        self._given = credentials
        self._credentials: Any = None
        self._project: Optional[str] = None
        self._clients: dict[str, Any] = {}
        self._lock = threading.Lock()

    # -- credentials ------------------------------------------------------------------------
    def _resolve(self) -> None:
        with self._lock:
            if self._credentials is not None:
                return
            if self._given is not None:
                self._credentials = self._given
                self._project = getattr(self._given, "project_id", None) or getattr(self._given, "quota_project_id",
                                                                                      None)
            else:
                import google.auth

                self._credentials, self._project = google.auth.default(scopes=SCOPES)

    @property
    def credentials(self) -> Any:
        """google.auth credentials; DefaultCredentialsError when there are none."""
        self._resolve()
        return self._credentials

    @property
    def project(self) -> str:
        configured = config.get("gcp.project")
        if configured:
            return configured
        self._resolve()
        if not self._project:
            raise GCPError("no Google Cloud project: set the config key coiled-lab.gcp.project, "
                           "GOOGLE_CLOUD_PROJECT, or use credentials that name one")
        return self._project

    @staticmethod
    def endpoint(service: str) -> str:
        configured = config.get(f"gcp.endpoints.{service}")
        if not configured and service == "storage" and os.environ.get(STORAGE_EMULATOR_ENV):
            host = os.environ[STORAGE_EMULATOR_ENV]
            configured = host if "://" in host else f"http://{host}"
        return (configured or DEFAULT_ENDPOINTS[service]).rstrip("/")

    # -- clients ----------------------------------------------------------------------------
    def compute(self, name: str) -> Any:
        """A Compute client by class name without ``Client`` (``"Instances"``, ``"ZoneOperations"``)."""
        key = f"compute.{name}"
        if key not in self._clients:
            from google.cloud import compute_v1

            credentials = self.credentials
            with self._lock:
                if key not in self._clients:
                    self._clients[key] = getattr(compute_v1, f"{name}Client")(
                        credentials=credentials, transport="rest",
                        client_options={"api_endpoint": self.endpoint("compute")})
        return self._clients[key]

    def logging(self) -> Any:
        """google-cloud-logging's client, over HTTP (never gRPC)."""
        if "logging" not in self._clients:
            from google.cloud import logging as cloud_logging

            credentials, project = self.credentials, self.project
            with self._lock:
                self._clients.setdefault("logging", cloud_logging.Client(
                    project=project, credentials=credentials, _use_grpc=False,
                    client_options={"api_endpoint": self.endpoint("logging")}))
        return self._clients["logging"]

    def http(self) -> Any:
        """An AuthorizedSession for the REST services without a client package here."""
        if "http" not in self._clients:
            from google.auth.transport.requests import AuthorizedSession

            credentials = self.credentials
            with self._lock:
                self._clients.setdefault("http", AuthorizedSession(credentials))
        return self._clients["http"]

    # -- calls ------------------------------------------------------------------------------
    async def call(self, method: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """One client call, in a thread, retried on throttling and transient errors."""
        return await deadline.blocking(_retry()(method), *args, **kwargs)

    async def rest(self, method: str, service: str, path: str, body: Any = None, **kwargs: Any) -> Any:
        """One JSON request to ``<endpoint of service><path>``; a google.api_core error when refused."""
        url = f"{self.endpoint(service)}{path}"

        def send() -> Any:
            from google.api_core import exceptions

            response = self.http().request(method, url, json=body, timeout=60, **kwargs)
            if response.status_code >= 400:
                raise exceptions.from_http_response(response)
            return response.json() if response.content else {}

        return await self.call(send)
