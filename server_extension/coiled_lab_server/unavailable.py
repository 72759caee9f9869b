"""The routes of a server whose coiled-lab extension could not start.

Jupyter logs an extension that fails to load and carries on; without these routes every
``/coiled-lab/...`` URL would be an HTML 404 and the reason only in the server's log. With
them, each answers 503 with the API's JSON error shape naming the reason, to
authenticated users only (the reason may name paths of this machine).
"""

from __future__ import annotations

import json
from typing import Any

from jupyter_server.base.handlers import APIHandler
from tornado import web


class UnavailableHandler(APIHandler):
    """Every method of every coiled-lab route: 503 ``{"error": reason, "field": null}``."""

    reason: str

    def initialize(self, reason: str) -> None:
        self.reason = reason

    def get_login_url(self) -> str:
        """Like the working routes: 403 without auth, never a redirect."""
        raise web.HTTPError(403)

    def _unavailable(self) -> None:
        self.set_status(503)
        self.set_header("Content-Type", "application/json")
        self.finish(json.dumps({"error": self.reason, "field": None}))

    @web.authenticated
    def get(self, *args: Any) -> None:
        self._unavailable()

    @web.authenticated
    def post(self, *args: Any) -> None:
        self._unavailable()

    @web.authenticated
    def put(self, *args: Any) -> None:
        self._unavailable()

    @web.authenticated
    def patch(self, *args: Any) -> None:
        self._unavailable()

    @web.authenticated
    def delete(self, *args: Any) -> None:
        self._unavailable()


def routes(reason: str) -> list[tuple[str, type, dict[str, Any]]]:
    return [(r"/coiled-lab(/.*|)", UnavailableHandler, {"reason": reason})]
