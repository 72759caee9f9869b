"""What every handler shares: one ClusterManager, the kernel token, credentials, sockets.

The manager runs in the Jupyter server's own event loop. It is started as soon as that
loop runs. When another process (a second Jupyter server) already manages the state dir,
this one is read-only: it lists, shows, tails logs and streams events, refuses changes
with a 503 naming that process, and takes the clusters over by itself once that process
is gone (then, and only then, it tells kernels and CLIs where it is through the runtime
file). Closing it leaves every cluster running; each stops by its own timeouts.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import os
import secrets
from pathlib import Path
from typing import Any, Optional
from urllib.parse import urlsplit

from jupyter_server.auth.identity import User
from jupyter_server.utils import url_path_join
from tornado.httputil import HTTPServerRequest

from coiled_lab.api import API_PATH, AUTH_SCHEME, ENV_TOKEN, ENV_URL, remove_runtime_file, write_runtime_file
from coiled_lab.control.manager import ClusterManager
from coiled_lab.errors import ManagerBusy, Unavailable

from .credentials import Credentials

_LOOPBACK_OR_ANY = ("", "localhost", "127.0.0.1", "0.0.0.0", "::", "*")


class Service:
    def __init__(self, state_dir: Path, log: logging.Logger, cloud_secrets: dict[str, str]):
        """``cloud_secrets``: what the server's environment held (:mod:`.secret_env`), for
        its own cloud calls only."""
        self.state_dir = Path(state_dir)
        self.log = log
        self.token = secrets.token_urlsafe(32)
        self.credentials = Credentials(self.state_dir, cloud_secrets)
        self.api_url: Optional[str] = None
        self.sockets: set[Any] = set()  # open event sockets, closed when the server stops
        self.encoded_catalogs: dict[tuple, tuple[Any, str]] = {}  # (backend, region) -> (catalog, its JSON)
        self.kernel_identity = User(username="coiled-lab-kernel", name="coiled-lab kernel token")
        self._manager = ClusterManager(self.state_dir, sessions=self._session)
        self._manager.on_owner = self._managing
        self._start_lock: Optional[asyncio.Lock] = None
        self._closed = False

    # -- credentials -------------------------------------------------------------------------
    def _session(self, backend: str) -> Any:
        """The credentials a cloud backend of this server's manager uses: what an admin
        stored or what the server's environment held (kept out of kernels'), else the SDK's
        own chain (profile, SSO, instance role)."""
        if backend == "aws":
            return self.credentials.botocore_session()
        return self.credentials.google_credentials() if backend == "gcp" else None

    def put_credentials(self, body: Any) -> dict[str, Any]:
        status = self.credentials.put(body)
        self._manager.credentials_changed(body["provider"])  # put() accepted it: 'aws' or 'gcp'
        return status

    # -- kernels ---------------------------------------------------------------------------
    def publish(self, serverapp: Any) -> None:
        """Put the API URL and token into the environment that kernels started from now on
        inherit. Called once the HTTP server is bound, when the real port is known."""
        if serverapp.sock:
            self.log.warning("coiled-lab: the server listens on a Unix socket; kernels cannot reach its API")
            return
        self.api_url = api_url(serverapp)
        os.environ[ENV_URL] = self.api_url
        os.environ[ENV_TOKEN] = self.token

    def kernel_user(self, request: HTTPServerRequest) -> Optional[User]:
        """The identity of a request carrying ``Authorization: coiled-lab <token>``, else None."""
        scheme, _, token = request.headers.get("Authorization", "").partition(" ")
        if scheme.lower() != AUTH_SCHEME or not token:
            return None
        if hmac.compare_digest(token.strip().encode(), self.token.encode()):
            return self.kernel_identity
        return None

    # -- the manager -------------------------------------------------------------------------
    async def manager(self) -> ClusterManager:
        """The started manager, read-only while another process holds the state dir (its
        changes raise ManagerBusy: 503). A manager that cannot start raises Unavailable
        (503) naming why, on every request until it can."""
        if self._manager.started:
            return self._manager
        if self._closed:
            raise ManagerBusy("the Jupyter server is shutting down")
        if self._start_lock is None:
            self._start_lock = asyncio.Lock()
        async with self._start_lock:
            if not self._manager.started:
                try:
                    await self._manager.start(readonly_ok=True)
                except Unavailable:
                    raise  # it names its cause and fix already (a damaged store, say)
                except Exception as exc:  # noqa: BLE001 - every route says why (503), none answers 500
                    raise Unavailable(f"coiled-lab's control plane could not start: {type(exc).__name__}: {exc}; "
                                      f"fix that in {self.state_dir} and it starts with the next request") from exc
                if not self._manager.owner:
                    self.log.warning("coiled-lab: read-only until it is gone: %s", self._manager.busy)
        return self._manager

    def _managing(self) -> None:
        """This server now manages the state dir: kernels and CLIs may find it."""
        self.log.info("coiled-lab: managing clusters in %s", self.state_dir)
        if self.api_url:
            write_runtime_file(self.state_dir, self.api_url, self.token)

    async def start(self) -> None:
        """Start the manager at server start; a failure is logged here, and every request
        answers it (503) until the manager can start."""
        try:
            await self.manager()
        except Unavailable as exc:
            self.log.error("%s", exc, exc_info=exc.__cause__)

    def dashboard_host_allowed(self, handler: Any, host: str) -> bool:
        """jupyter-server-proxy's allow-list: only hosts of live clusters' dashboards, as the
        store records them (no cloud call)."""
        if not self._manager.started:
            return False
        for rec in self._manager.store.list_clusters(live_only=True):
            link = rec.state.get("dashboard")
            if link and urlsplit(link).hostname == host:
                return True
        return False

    async def close(self) -> None:
        """Stop managing (clusters keep running), and take back what was published."""
        if self._closed:
            return
        self._closed = True
        for socket in list(self.sockets):
            socket.close(1001, "the Jupyter server is stopping")
        if self._manager.started:
            await self._manager.close()
        else:
            self._manager.store.close()
        remove_runtime_file(self.state_dir, self.token)
        for key, value in ((ENV_URL, self.api_url), (ENV_TOKEN, self.token)):
            if value is not None and os.environ.get(key) == value:
                del os.environ[key]


def api_url(serverapp: Any) -> str:
    """The API's URL as seen from this machine (kernels run beside the server)."""
    scheme = "https" if serverapp.certfile else "http"
    host = "127.0.0.1" if serverapp.ip in _LOOPBACK_OR_ANY else serverapp.ip
    if ":" in host:
        host = f"[{host}]"
    return f"{scheme}://{host}:{serverapp.port}{url_path_join(serverapp.base_url, API_PATH)}"
