"""The routes of :mod:`.partner`, apart because they subclass dask-labextension's handler
(imported only when it is installed)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from dask_labextension.dashboardhandler import DaskDashboardHandler
from jupyter_server.base.handlers import JupyterHandler
from tornado import web

if TYPE_CHECKING:
    from .partner import Partner


class DashboardRedirect(DaskDashboardHandler):
    """dask-labextension's dashboard route: coiled-lab's clusters are redirected to their
    dashboard link (the sandboxed, keyed proxy), except for its URL check, answered here;
    those that stopped answer 204 (no dashboard); any other cluster is its own."""

    def initialize(self, partner: "Partner") -> None:
        self.partner = partner

    async def prepare(self, *args: Any, **kwargs: Any) -> None:
        await super().prepare(*args, **kwargs)  # jupyter-server-proxy's: Jupyter's auth on every verb
        if not self.current_user:
            return  # it answered already: a redirect to the login page
        key = self.path_kwargs["cluster_id"]
        cluster_id = self.partner.cluster_of(key)
        if cluster_id is None:
            if self.partner.was_listed(key):  # a coiled-lab cluster that stopped: no dashboard
                self.set_status(204)
                self.finish()
            return
        path = self.path_kwargs["proxied_path"]
        if path == "/individual-plots.json" and self.request.method == "GET":
            # Its URL check, every few seconds: answered here, so a scheduler that died a
            # moment ago (before the manager saw it) is "no dashboard", not a 502 in the console.
            plots = await self.partner.plots(cluster_id)
            if plots is None:
                self.set_status(204)
                self.finish()
            else:
                self.finish(plots)
            return
        target = self.partner.dashboard_link(cluster_id) + path.lstrip("/")
        query = self.request.query
        self.redirect(target + ("?" + query if query else ""))


class NoClusterHandler(JupyterHandler):
    """``individual-plots.json`` of "no cluster": 204, which dask-labextension's URL check
    takes for "no dashboard here" without a console error."""

    @web.authenticated
    def get(self) -> None:
        self.set_status(204)
        self.finish()
