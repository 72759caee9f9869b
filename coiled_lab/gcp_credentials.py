"""The user's own Google Cloud data credentials, sent from the kernel to a cluster's workers.

In the kernel, :func:`access_token` asks the KERNEL's application-default credentials
(``GOOGLE_APPLICATION_CREDENTIALS``, ``gcloud auth application-default login``, ...) for a
fresh OAuth access token. The machine's own service account (the metadata server, which a
Jupyter server on that machine may provision with) is refused, and the server's stored
credentials are not reachable from a kernel at all. Only the token travels, never a key or
refresh token: it stops working within the hour unless the kernel sends the next one
(:mod:`coiled_lab.credentials` re-sends it before it expires).

On a worker, :class:`GCPTokenPlugin` puts the token in the process's environment
(``GOOGLE_OAUTH_ACCESS_TOKEN``, the name Terraform and other tools read) and makes
``google.auth.default()`` answer with :class:`SentToken`, credentials that read the newest
token from there at every request: google-cloud clients and gcsfs, which call
``google.auth.default()``, then use the user's token, and a client made before a refresh
picks up the next token by itself. Nothing is written to files or logs.
"""

from __future__ import annotations

import datetime
import functools
import os
import time
from typing import Any, Optional

from distributed.diagnostics.plugin import WorkerPlugin

from .errors import ClusterError

PLUGIN_NAME = "coiled-lab-gcp-credentials"
SCOPES = ["https://www.googleapis.com/auth/cloud-platform"]
TOKEN_ENV = "GOOGLE_OAUTH_ACCESS_TOKEN"
EXPIRY_ENV = "COILED_LAB_GCP_TOKEN_EXPIRY"  # epoch seconds
PROJECT_ENV = "GOOGLE_CLOUD_PROJECT"


class GCPTokenPlugin(WorkerPlugin):
    """Puts an access token in a worker's environment and routes ``google.auth.default()``
    to it. Registering it again under the same name replaces it (that is a refresh)."""

    name = PLUGIN_NAME

    def __init__(self, token: str, expiration: Optional[float], project: Optional[str]):
        self._token = token
        self.expiration = expiration
        self.project = project

    def setup(self, worker: Any = None) -> None:
        os.environ[TOKEN_ENV] = self._token
        if self.expiration is not None:
            os.environ[EXPIRY_ENV] = str(self.expiration)
        else:
            os.environ.pop(EXPIRY_ENV, None)
        if self.project:
            os.environ[PROJECT_ENV] = self.project
        install_default()

    # No teardown: as for AWS, a refresh must never leave tasks without a token for a moment.

    def __repr__(self) -> str:  # distributed may log a plugin; never its token
        return f"<GCPTokenPlugin project={self.project!r}>"


def _expiry() -> Optional[datetime.datetime]:
    value = os.environ.get(EXPIRY_ENV)
    # google-auth compares expiries with naive UTC datetimes.
    return datetime.datetime.fromtimestamp(float(value), datetime.timezone.utc).replace(tzinfo=None) if value else None


@functools.lru_cache(maxsize=None)
def _sent_token_class() -> type:
    """:class:`SentToken`, made once on first use so that importing this module (as every
    worker does to unpickle the plugin) does not import google-auth."""
    from google.auth import credentials, exceptions

    class SentToken(credentials.Credentials):
        """The newest access token the kernel sent, read from this process's environment at
        every use; google-auth's own refresh has nothing to do but notice an expired one."""

        @property
        def token(self) -> Optional[str]:
            return os.environ.get(TOKEN_ENV)

        @token.setter
        def token(self, value: Optional[str]) -> None:
            pass  # only the kernel's next send changes the token

        @property
        def expiry(self) -> Optional[datetime.datetime]:
            return _expiry()

        @expiry.setter
        def expiry(self, value: Optional[datetime.datetime]) -> None:
            pass

        def refresh(self, request: Any) -> None:
            expiry = _expiry()
            now = datetime.datetime.now(datetime.timezone.utc).replace(tzinfo=None)
            if self.token is None or (expiry is not None and now >= expiry):
                raise exceptions.RefreshError(
                    "the Google access token coiled-lab sent to this worker has expired and no fresh one "
                    "arrived: call cluster.send_credentials(provider='gcp') again from the kernel")

        def __repr__(self) -> str:
            return "<SentToken (coiled-lab)>"

    return SentToken


def sent_token() -> Any:
    """Credentials for the token the kernel sent (for clients that take credentials)."""
    return _sent_token_class()()


def install_default() -> None:
    """Make ``google.auth.default()`` in this process answer with the sent token (and the
    kernel's project) while one is present, and ask the usual chain otherwise."""
    import google.auth

    if getattr(google.auth.default, "coiled_lab", False):
        return
    chain = google.auth.default

    def default(scopes=None, request=None, quota_project_id=None, default_scopes=None):
        if os.environ.get(TOKEN_ENV):
            return sent_token(), os.environ.get(PROJECT_ENV)
        return chain(scopes=scopes, request=request, quota_project_id=quota_project_id,
                     default_scopes=default_scopes)

    default.coiled_lab = True  # type: ignore[attr-defined]
    default.__doc__ = chain.__doc__
    google.auth.default = default


def access_token() -> GCPTokenPlugin:
    """A fresh access token from this process's application-default credentials (blocking:
    it calls Google's token endpoint). Raises ClusterError when the kernel has none or
    only the machine's own."""
    import google.auth
    import google.auth.exceptions
    from google.auth import compute_engine
    from google.auth.transport.requests import Request

    try:
        credentials, project = google.auth.default(scopes=SCOPES)
    except google.auth.exceptions.DefaultCredentialsError:
        raise ClusterError(
            "no Google application-default credentials in this kernel (GOOGLE_APPLICATION_CREDENTIALS or "
            "`gcloud auth application-default login`); the Jupyter server's own credentials are never sent "
            "to workers") from None
    if isinstance(credentials, compute_engine.Credentials):
        raise ClusterError(
            "the only Google credentials in this kernel are this machine's own service account (the metadata "
            "server), which the Jupyter server may be using to provision clusters; they are not sent to "
            "workers. Give the kernel your own: `gcloud auth application-default login` or "
            "GOOGLE_APPLICATION_CREDENTIALS")
    credentials.refresh(Request())
    expiry = credentials.expiry
    expiration = expiry.replace(tzinfo=datetime.timezone.utc).timestamp() if expiry is not None else None
    if expiration is not None and expiration <= time.time():
        raise ClusterError("Google answered with an access token that has already expired")
    return GCPTokenPlugin(credentials.token, expiration, project)
