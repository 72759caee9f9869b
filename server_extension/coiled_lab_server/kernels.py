"""The kernel token: how kernels (and terminals, the CLI) of a user's Jupyter server reach
its coiled-lab routes, whether the server runs the control plane itself (:mod:`.service`)
or forwards to the team service (:mod:`.forward`).

The server publishes its API URL and a random token through ``os.environ`` (kernels
inherit it) once its port is final. The token opens coiled-lab's routes and no Jupyter
route: it is not a Jupyter token.
"""

from __future__ import annotations

import hmac
import logging
import os
import secrets
from typing import Any, Optional

from jupyter_server.auth.identity import User
from jupyter_server.utils import url_path_join
from tornado.httputil import HTTPServerRequest

from coiled_lab.api import API_PATH, AUTH_SCHEME, ENV_TOKEN, ENV_URL

_LOOPBACK_OR_ANY = ("", "localhost", "127.0.0.1", "0.0.0.0", "::", "*")


class KernelDoor:
    """The token kernels carry, and the URL they send it to."""

    log: logging.Logger

    def __init__(self) -> None:
        self.token = secrets.token_urlsafe(32)
        self.api_url: Optional[str] = None
        self.kernel_identity = User(username="coiled-lab-kernel", name="coiled-lab kernel token")

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

    def withdraw(self) -> None:
        """Take back what :meth:`publish` put into the environment."""
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
