"""A user's Jupyter server on a hub with the team service: coiled-lab's routes, forwarded.

When the extension finds the service's URL (``COILED_LAB_SERVICE_URL`` or dask config
``coiled-lab.service-url``) and the hub's token for this server (``JUPYTERHUB_API_TOKEN``),
it makes no manager and holds no cloud credentials. Every ``/coiled-lab/...`` request
(the REST API, the events socket, the usage plot, the dashboard's link and its keyed
proxy) goes to the same path under the service's URL:

- authenticated here as before (Jupyter's cookie or token, or the kernel token that
  kernels, terminals and the CLI carry), so the sidebar, magic, widgets and CLI are
  unchanged;
- sent there with ``Authorization: token $JUPYTERHUB_API_TOKEN`` and none of this
  server's credentials: the hub's token names this server's user, whom the service acts
  for (owner, limits, audit). The token needs the scope
  ``access:services!service=coiled-lab`` (``c.Spawner.server_token_scopes``);
- the dashboards' keyed prefix is forwarded without any token: its key is its credential,
  checked by the service as in single-user mode;
- redirects the service answers (the dashboard link's) are rewritten to this server's
  prefix, so a browser stays on its own server's URL.

The events socket is opened upstream *before* the browser's is accepted, so that a
cluster this user may not see is a 404 here too, not an accepted socket that closes.
"""

from __future__ import annotations

import logging
import os
from typing import Any, Optional
from urllib.parse import urlsplit

from jupyter_core.utils import ensure_async
from jupyter_server.base.call_context import CallContext
from jupyter_server.base.handlers import JupyterHandler
from jupyter_server.utils import url_path_join
from jupyter_server_proxy.handlers import ProxyHandler
from tornado import httpclient, web, websocket

from coiled_lab import config
from coiled_lab.api import remove_runtime_file, write_runtime_file

from . import dashboard
from .handlers import AUTH_RESOURCE
from .kernels import KernelDoor

ENV_SERVICE_URL = "COILED_LAB_SERVICE_URL"
SERVICE_URL_KEY = "coiled-lab.service-url"
ENV_HUB_TOKEN = "JUPYTERHUB_API_TOKEN"


def service_url() -> Optional[str]:
    """The team service this server forwards to, when one is configured and this server
    has a hub token to send it; else None (single-user mode)."""
    url = os.environ.get(ENV_SERVICE_URL) or config.get("service-url", None)
    if url and os.environ.get(ENV_HUB_TOKEN):
        return url
    return None


class Forwarder(KernelDoor):
    """What the forwarding routes share: the service's address, the hub token, the kernel token."""

    def __init__(self, url: str, log: logging.Logger):
        super().__init__()
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"{ENV_SERVICE_URL}: {url!r} is not an http(s) URL; set it to the service's URL, "
                             "such as http://127.0.0.1:10101/services/coiled-lab/")
        self.scheme = parts.scheme
        self.host = parts.hostname
        self.port = parts.port or (443 if parts.scheme == "https" else 80)
        self.prefix = parts.path if parts.path.endswith("/") else parts.path + "/"
        self.log = log
        self.state_dir = config.state_dir()

    @property
    def hub_token(self) -> str:
        return os.environ.get(ENV_HUB_TOKEN, "")

    def publish(self, serverapp: Any) -> None:
        super().publish(serverapp)
        if self.api_url:  # the CLI in a terminal finds this server as it finds a managing one
            self.state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
            write_runtime_file(self.state_dir, self.api_url, self.token)

    def close(self) -> None:
        remove_runtime_file(self.state_dir, self.token)
        self.withdraw()


class ForwardHandler(ProxyHandler):
    """``/coiled-lab/{path}`` → ``{service}/coiled-lab/{path}``, HTTP and WebSockets."""

    forwarder: Forwarder
    keyed = False  # the dashboards' keyed prefix: no credential but its key
    _upstream: Optional[websocket.WebSocketClientConnection] = None
    _early: list[Any]
    _opened = False

    def initialize(self, forwarder: Forwarder) -> None:
        self.forwarder = forwarder
        self._early = []

    def get_login_url(self) -> str:
        """APIs, sockets and dashboards answer 403 without auth; they never redirect."""
        raise web.HTTPError(403)

    async def prepare(self) -> None:
        self.keyed = self.path_args[0].startswith("dashboards/")
        user = None if self.keyed else self.forwarder.kernel_user(self.request)
        if self.keyed or user is not None:
            # The key (checked by the service) or the kernel token: Jupyter's host check still applies.
            CallContext.set(CallContext.JUPYTER_HANDLER, self)
            if not self.check_host():
                raise web.HTTPError(403)
            self.current_user = self._jupyter_current_user = user or dashboard.VIEWER
        else:
            await JupyterHandler.prepare(self)
            if not self.current_user:
                raise web.HTTPError(403)
            action = "read" if self.request.method in ("GET", "HEAD") else "write"
            if not await ensure_async(self.authorizer.is_authorized(self, self.current_user, action, AUTH_RESOURCE)):
                raise web.HTTPError(403, "not authorized to use coiled-lab")
            if self.request.method not in ("GET", "HEAD", "OPTIONS"):
                self.check_xsrf_cookie_here()
        self.request.query = dashboard.without_jupyter_auth(self.request.query)

    def check_xsrf_cookie_here(self) -> None:
        """Jupyter's XSRF check for cookie-authenticated changes (ProxyHandler defers it to
        the proxied app, but the service sees a token, never this browser's cookie)."""
        JupyterHandler.check_xsrf_cookie(self)

    # -- where to -------------------------------------------------------------------------
    def upstream_path(self, path: str) -> str:
        return url_path_join(self.forwarder.prefix, "coiled-lab", path)

    def get_client_uri(self, protocol: str, host: str, port: int, proxied_path: str) -> str:
        secure = self.forwarder.scheme == "https"
        protocol = {"http": "https", "ws": "wss"}[protocol] if secure else protocol
        return super().get_client_uri(protocol, host, port, proxied_path)

    def proxy_request_headers(self) -> Any:
        """This server's credentials stay here; the hub token names the user upstream."""
        headers = super().proxy_request_headers()
        for name in (*dashboard.JUPYTER_CREDENTIAL_HEADERS, "Host", "Origin"):
            if name in headers:
                del headers[name]
        if not self.keyed:
            headers["Authorization"] = f"token {self.forwarder.hub_token}"
        return headers

    def _rewrite_location_header(self, location: str, host: str, port: int, proxied_path: str) -> str:
        """The service's redirects (a dashboard link's) point under its prefix: bring them
        under this server's."""
        if location.startswith(self.forwarder.prefix):
            return url_path_join(self.base_url, location[len(self.forwarder.prefix):])
        return location

    async def _forward(self, path: str) -> None:
        try:
            await self.proxy(self.forwarder.host, self.forwarder.port, self.upstream_path(path))
        except web.HTTPError as exc:
            if exc.status_code not in (500, 599):
                raise
            raise web.HTTPError(502, f"the coiled-lab service at {self.forwarder.scheme}://{self.forwarder.host}:"
                                     f"{self.forwarder.port}{self.forwarder.prefix} did not answer "
                                     f"({exc.log_message}); ask your JupyterHub admin") from None
        except OSError as exc:
            raise web.HTTPError(502, f"the coiled-lab service did not answer ({exc}); ask your JupyterHub admin") \
                from None

    def write_error(self, status_code: int, **kwargs: Any) -> None:
        """The API's JSON error shape, as the service's own errors have."""
        import json

        from .errors import error_body

        exc = kwargs.get("exc_info", (None, None, None))[1]
        self.set_header("Content-Type", "application/json")
        self.finish(json.dumps(error_body(exc, status_code)))

    # -- HTTP -----------------------------------------------------------------------------
    async def http_get(self, path: str) -> None:
        await self._forward(path)

    async def post(self, path: str) -> None:
        await self._forward(path)

    async def put(self, path: str) -> None:
        await self._forward(path)

    async def patch(self, path: str) -> None:
        await self._forward(path)

    async def delete(self, path: str) -> None:
        await self._forward(path)

    async def head(self, path: str) -> None:
        await self._forward(path)

    async def options(self, path: str) -> None:
        await self._forward(path)

    # -- WebSockets -----------------------------------------------------------------------
    async def get(self, path: str) -> None:
        if self.request.headers.get("Upgrade", "").lower() == "websocket" and not self.keyed:
            if not await self._connect_upstream(path):
                return
        await super().get(path)

    async def _connect_upstream(self, path: str) -> bool:
        """Open the events socket upstream first; answer its refusal (404, 403) as it is."""
        uri = self.get_client_uri("ws", self.forwarder.host, self.forwarder.port, self.upstream_path(path))
        request = httpclient.HTTPRequest(uri, headers=self.proxy_request_headers())
        try:
            self._upstream = await websocket.websocket_connect(request, on_message_callback=self._relay)
        except httpclient.HTTPClientError as exc:
            body = exc.response.body if exc.response is not None else b""
            self.set_status(exc.code if exc.code < 599 else 502)
            self.set_header("Content-Type", "application/json")
            self.finish(body or b'{"error": "the coiled-lab service refused the socket", "field": null}')
            return False
        except OSError as exc:
            raise web.HTTPError(502, f"the coiled-lab service did not answer ({exc}); ask your JupyterHub admin") \
                from None
        return True

    def _relay(self, message: Any) -> None:
        if not self._opened:
            self._early.append(message)
        elif message is None:
            self.close()
        else:
            self.write_message(message, binary=isinstance(message, bytes))

    async def open(self, path: str) -> None:
        if self._upstream is None:  # the dashboard's (bokeh) socket: jupyter-server-proxy's own
            return await self.proxy_open(self.forwarder.host, self.forwarder.port, self.upstream_path(path))
        self._opened = True
        for message in self._early:
            self._relay(message)
        self._early.clear()

    def on_message(self, message: Any) -> None:
        if self._upstream is None:
            return super().on_message(message)
        return None  # events clients only listen

    def on_close(self) -> None:
        if self._upstream is not None:
            self._upstream.close()
            return
        super().on_close()


def routes(forwarder: Forwarder) -> list[tuple[str, type, dict[str, Any]]]:
    return [(r"/coiled-lab/(.*)", ForwardHandler, {"forwarder": forwarder, "host_allowlist": [forwarder.host]})]
