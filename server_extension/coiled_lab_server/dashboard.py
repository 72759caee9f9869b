"""A cluster's Dask dashboard through the Jupyter server, without the Jupyter user's authority.

The dashboard is an HTTP server on the cluster's scheduler, and whoever holds the cluster's
TLS key (a compromised VM, code given the cluster's ``/connection``) can add pages to it.
Served on the Jupyter origin as it is, such a page's script would act with the user's
session: start kernels, read and write files. So the dashboard is reached in two steps:

- ``/coiled-lab/clusters/{id}/dashboard/{path}``, the link every front door hands out (the
  lab tab, dask-labextension's panes, the widget, the CLI), is authenticated by Jupyter
  and only redirects to the cluster's keyed prefix, without Jupyter's auth parameters.
- ``/coiled-lab/dashboards/{id}/{key}/{path}`` is the proxy. Its credential is the key in
  the path (an HMAC of the cluster id under the server's cookie secret), never a Jupyter
  cookie, and every answer carries ``Content-Security-Policy: sandbox`` without
  ``allow-same-origin``. The browser then runs the page in an opaque origin: it cannot read
  Jupyter's cookies (so not the ``_xsrf`` token) nor any answer from the Jupyter origin, its
  requests carry no cookies and ``Origin: null``, which Jupyter's API refuses. The page's
  own scripts, styles and bokeh's websocket use relative URLs, which keep the key.

Only the response headers a dashboard needs pass from upstream: no ``Set-Cookie`` (it could
overwrite ``_xsrf``), no ``Clear-Site-Data``, HSTS or CORS headers of its own.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from urllib.parse import quote, unquote_plus

from jupyter_server.auth.identity import User
from jupyter_server.utils import url_path_join
from tornado.httputil import HTTPHeaders
from tornado.web import OutputTransform

LINK_PREFIX = "coiled-lab/clusters"  # + /{id}/dashboard/{path}: Jupyter-authenticated, redirects
KEYED_PREFIX = "coiled-lab/dashboards"  # + /{id}/{key}/{path}: the proxy

# The sandbox a dashboard page runs in: scripts (bokeh), forms and popups (which inherit the
# sandbox), downloads (profile exports); never allow-same-origin, top navigation or modals.
SANDBOX_POLICY = "sandbox allow-scripts allow-forms allow-popups allow-downloads"

# Query parameters Jupyter reads credentials from (IdentityProvider's ``token``, tornado's
# ``_xsrf``): they stay on the Jupyter server.
JUPYTER_AUTH_PARAMS = frozenset({"token", "_xsrf"})

# Request headers that carry Jupyter's credentials: never sent to the cluster's machines.
JUPYTER_CREDENTIAL_HEADERS = ("Authorization", "Cookie", "X-XSRFToken")

# Response headers a dashboard's answer may carry to the browser (Content-Length is the
# server's own count); everything else from upstream is dropped.
UPSTREAM_HEADERS = frozenset(
    h.lower() for h in (
        "Accept-Ranges", "Cache-Control", "Content-Disposition", "Content-Encoding", "Content-Language",
        "Content-Length", "Content-Range", "Content-Type", "Date", "ETag", "Expires", "Last-Modified",
        "Location", "Pragma", "Retry-After", "Server", "Vary",
    )
)

# Who a request with a valid key is, in Jupyter's logs.
VIEWER = User(username="coiled-lab-dashboard", name="a coiled-lab dashboard link")


def dashboard_key(secret: bytes, cluster_id: str) -> str:
    """The credential of one cluster's keyed prefix: stable while the server's cookie secret
    is (so an open dashboard survives a server restart), useless for any other cluster."""
    digest = hmac.new(secret, b"coiled-lab dashboard\0" + cluster_id.encode(), hashlib.sha256).digest()
    return base64.urlsafe_b64encode(digest[:24]).decode()


def without_jupyter_auth(query: str) -> str:
    """``query`` without Jupyter's auth parameters; the others are kept byte for byte."""
    return "&".join(part for part in query.split("&")
                    if part and unquote_plus(part.partition("=")[0]) not in JUPYTER_AUTH_PARAMS)


def keyed_path(base_url: str, secret: bytes, cluster_id: str, path: str = "") -> str:
    """The proxy's path (URL-quoted) for ``path`` (as tornado decoded it) of a cluster's
    dashboard."""
    prefix = url_path_join(base_url, KEYED_PREFIX, quote(cluster_id, safe=""), dashboard_key(secret, cluster_id))
    path = quote(path, safe="/:@!$&'()*+,;=-._~")  # RFC 3986's path characters stay as they are
    return prefix + (path if path.startswith("/") or not path else "/" + path)


def apply_policy(headers: HTTPHeaders) -> None:
    """Make an answer of the keyed prefix safe to show: only the upstream headers a dashboard
    needs, and the sandbox that puts its page in an opaque origin."""
    for name in {name for name, _ in headers.get_all()}:
        if name.lower() not in UPSTREAM_HEADERS:
            del headers[name]
    headers["Content-Security-Policy"] = SANDBOX_POLICY
    headers["Referrer-Policy"] = "no-referrer"  # the key stays out of the sites a dashboard links to


class PolicyTransform(OutputTransform):
    """Applies :func:`apply_policy` to every answer of the keyed prefix as its headers are
    written. A transform, tornado's hook for a response's first chunk (as gzip's), because
    jupyter-server-proxy writes upstream headers in several places (buffered, streamed,
    errors) and rebinds the handler's ``flush`` on each instance."""

    def transform_first_chunk(
        self, status_code: int, headers: HTTPHeaders, chunk: bytes, finishing: bool
    ) -> tuple[int, HTTPHeaders, bytes]:
        if status_code != 101:  # a websocket's handshake: its headers are tornado's own
            apply_policy(headers)
        return status_code, headers, chunk
