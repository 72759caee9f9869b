"""What every handler shares: one ClusterManager, the kernel token, credentials, sockets.

In a user's own Jupyter server (single-user mode) every request acts for that user, who
sees every cluster (:data:`~coiled_lab.control.callers.LOCAL`). In the team service
(``coiled-lab serve``, ``team=True``) each request acts for the JupyterHub user the
identity provider found (:mod:`.hub`), there is no kernel token, and a request without a
hub user is refused.

The manager runs in the Jupyter server's own event loop. It is started as soon as that
loop runs. When another process (a second Jupyter server) already manages the state dir,
this one is read-only: it lists, shows, tails logs and streams events, refuses changes
with a 503 naming that process, and takes the clusters over by itself once that process
is gone (then, and only then, it tells kernels and CLIs where it is through the runtime
file). Closing it leaves every cluster running; each stops by its own timeouts.
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import Any, Optional
from urllib.parse import urlsplit

from jupyter_server.auth.identity import User
from tornado import web
from tornado.httputil import HTTPServerRequest

from coiled_lab.api import remove_runtime_file, write_runtime_file
from coiled_lab.control.callers import LOCAL, Caller
from coiled_lab.control.manager import ClusterManager
from coiled_lab.errors import Forbidden, ManagerBusy, Unavailable, quoted

from .credentials import Credentials
from .kernels import KernelDoor


class Service(KernelDoor):
    def __init__(self, state_dir: Path, log: logging.Logger, cloud_secrets: dict[str, str],
                 team: bool = False, db: Optional[str] = None):
        """``cloud_secrets``: what the server's environment held (:mod:`.secret_env`), for
        its own cloud calls only. ``team``: the JupyterHub service (see the module's
        docstring). ``db``: the store's URL (a PostgreSQL one); None: SQLite in the state dir."""
        super().__init__()
        self.state_dir = Path(state_dir)
        self.log = log
        self.team = team
        self.credentials = Credentials(self.state_dir, cloud_secrets)
        self.sockets: set[Any] = set()  # open event sockets, closed when the server stops
        self.encoded_catalogs: dict[tuple, tuple[Any, str]] = {}  # (backend, region) -> (catalog, its JSON)
        store = {"db": db} if db else {}
        self._manager = ClusterManager(self.state_dir, sessions=self._session, **store)
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

    # -- who asks ----------------------------------------------------------------------------
    def publish(self, serverapp: Any) -> None:
        if not self.team:  # the service's own kernels, if it had any, get nothing
            super().publish(serverapp)

    def kernel_user(self, request: HTTPServerRequest) -> Optional[User]:
        return None if self.team else super().kernel_user(request)

    def caller_of(self, user: Any) -> Caller:
        """Whom a request of ``user`` acts for: the server's own user in single-user mode,
        the hub user in the team service (403 for anyone else: fail closed)."""
        if not self.team:
            return LOCAL
        caller = getattr(user, "caller", None)
        if not isinstance(caller, Caller):
            raise web.HTTPError(403, "coiled-lab serve answers JupyterHub users only")
        return caller

    def require_admin(self, caller: Caller, what: str) -> None:
        """The service's credentials and its clean-up of every cluster are for admins only."""
        if self.team and not caller.admin:
            raise Forbidden(f"{what} is for coiled-lab admins (JupyterHub admins or the group named by "
                            f"coiled-lab.admin-group), and {quoted(caller.name)} is not one")

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

    @property
    def manager_as_is(self) -> ClusterManager:
        """The manager, started or not: for the health check and metrics, which read the
        store and never start anything."""
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
        self.withdraw()
