"""The Jupyter server extension: one ClusterManager for this server, its API and dashboards.

By the time it loads, the server's cloud secrets are already out of the environment
kernels inherit (:mod:`.secret_env`, when Jupyter first found the extension). Loading it
makes the shared state (:mod:`.service`) and registers the routes (:mod:`.handlers`);
once the server's loop runs and its port is final, it publishes the API URL and kernel
token to kernels and starts the manager in that loop. Stopping the server closes the
manager and leaves every cluster running.

It fails closed: when the shared state cannot be made (the state dir cannot be created,
say), every coiled-lab route answers 503 naming why (:mod:`.unavailable`), kernels get
no API URL, and stopping the server still stops it.

Two other shapes, for teams on a JupyterHub: in the team service (``coiled-lab serve``
sets ``team``, :mod:`.serve`) the manager acts for hub users and ``/health`` and
``/metrics`` are served too; in a user's server that finds the service configured
(:func:`.forward.service_url`) there is no manager at all and every route is forwarded.
"""

from __future__ import annotations

import asyncio
from typing import Optional

from jupyter_server.extension.application import ExtensionApp
from traitlets import Bool, Unicode

from coiled_lab import config

from . import forward, secret_env, unavailable
from .handlers import routes
from .partner import Partner
from .service import Service


class CoiledLabServer(ExtensionApp):
    name = "coiled_lab_server"
    description = "Dask clusters driven from JupyterLab: REST and WebSocket API, dashboard proxy"

    team = Bool(False, help="the JupyterHub service (coiled-lab serve): requests act for hub users").tag(config=True)
    db = Unicode("", help="the store's URL (postgresql://...); empty: SQLite in the state dir").tag(config=True)

    service: Optional[Service] = None
    forwarder: Optional[forward.Forwarder] = None  # a user's server on a hub with the team service
    partner: Optional[Partner] = None  # dask-labextension's cluster list, when it is installed
    failure: Optional[str] = None  # why the extension could not start: what every route answers
    _starting: Optional[asyncio.Future] = None

    def initialize_settings(self) -> None:
        secrets = secret_env.claim()
        url = None if self.team else forward.service_url()
        if url is not None:  # no manager, no credentials here: the service has them
            try:
                self.forwarder = forward.Forwarder(url, self.serverapp.log)
            except ValueError as exc:
                self.failure = f"coiled-lab could not start in this Jupyter server: {exc}"
                self.serverapp.log.error("%s", self.failure)
                return
            self.serverapp.io_loop.add_callback(self.forwarder.publish, self.serverapp)
            self.serverapp.log.info("coiled-lab: forwarding to the team service at %s", url)
            return
        try:
            self.service = Service(config.state_dir(), self.serverapp.log, secrets, team=self.team, db=self.db or None)
        except Exception as exc:  # noqa: BLE001 - whatever it is, the routes must say it (503)
            self.failure = (f"coiled-lab could not start in this Jupyter server: {type(exc).__name__}: {exc}; "
                            "fix that (coiled-lab.state-dir names its directory) and restart the server")
            self.serverapp.log.error("%s", self.failure, exc_info=exc)
            return
        # The HTTP server binds after extensions load (and may move to another port), and
        # the loop is not running yet under `jupyter server`: both are settled by then.
        self.serverapp.io_loop.add_callback(self._loop_started)

    def _loop_started(self) -> None:
        assert self.service is not None
        self.service.publish(self.serverapp)
        self._starting = asyncio.ensure_future(self.service.start())
        if self.partner is not None:
            self.partner.start()

    def initialize_handlers(self) -> None:
        if self.forwarder is not None:
            self.handlers.extend(forward.routes(self.forwarder))
        elif self.service is None:
            self.handlers.extend(unavailable.routes(self.failure or "coiled-lab did not start"))
        elif self.team:
            from . import ops

            self.handlers.extend(routes(self.service))
            self.handlers.extend(ops.routes(self.service))
        else:
            self.handlers.extend(routes(self.service))
            self.partner = Partner(self.service, self.serverapp.base_url)
            self.handlers.extend(self.partner.routes())

    async def stop_extension(self) -> None:
        """Never raises: Jupyter awaits this on SIGTERM before it stops its loop, so an
        exception here would leave the server running for ever."""
        if self.forwarder is not None:
            self.forwarder.close()
        if self.service is None:
            return
        try:
            if self.partner is not None:
                await self.partner.close()
            if self._starting is not None:
                await self._starting  # Service.start logs its own failure and returns
            await self.service.close()
        except Exception:  # noqa: BLE001 - logged; the server must stop anyway
            self.serverapp.log.exception("coiled-lab: stopping the extension failed")
