"""The Jupyter server extension: one ClusterManager for this server, its API and dashboards.

Loading it takes the server's cloud secrets out of the environment kernels inherit
(:mod:`.credentials`), registers the routes (:mod:`.handlers`) and, once the server's loop
runs and its port is final, publishes the API URL and kernel token to kernels and starts
the manager in that loop (:mod:`.service`). Stopping the server closes the manager and
leaves every cluster running.
"""

from __future__ import annotations

import asyncio
from typing import Optional

from jupyter_server.extension.application import ExtensionApp

from coiled_lab import config

from .handlers import routes
from .service import Service


class CoiledLabServer(ExtensionApp):
    name = "coiled_lab_server"
    description = "Dask clusters driven from JupyterLab: REST and WebSocket API, dashboard proxy"

    service: Service
    _starting: Optional[asyncio.Future] = None

    def initialize_settings(self) -> None:
        self.service = Service(config.state_dir(), self.serverapp.log)
        # The HTTP server binds after extensions load (and may move to another port), and
        # the loop is not running yet under `jupyter server`: both are settled by then.
        self.serverapp.io_loop.add_callback(self._loop_started)

    def _loop_started(self) -> None:
        self.service.publish(self.serverapp)
        self._starting = asyncio.ensure_future(self.service.start())

    def initialize_handlers(self) -> None:
        self.handlers.extend(routes(self.service))

    async def stop_extension(self) -> None:
        if self._starting is not None:
            await self._starting
        await self.service.close()
