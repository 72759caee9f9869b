"""The REST API, the events WebSocket and the dashboard proxy, as thin tornado handlers.

A handler parses the request, calls one manager method and writes JSON. Errors are
raised, never written: :class:`CoiledLabMixin` maps them through :mod:`.errors`.

Every route is authenticated either by Jupyter (cookie plus XSRF for browsers, the Jupyter
token for scripts) or by the kernel token that the extension hands to kernels
(``Authorization: coiled-lab <token>``). The kernel token is not a Jupyter token: Jupyter's
own routes (contents, kernels, terminals) refuse it, so a kernel reaches the control plane
and nothing else.

Each request acts for a :class:`~coiled_lab.control.callers.Caller` (``self.caller``,
passed to every manager verb): the server's own user in single-user mode, the JupyterHub
user in the team service (:mod:`.hub`), who sees and changes only their own clusters.
"""

from __future__ import annotations

import asyncio
import hmac
import json
from typing import Any, Awaitable, Optional
from urllib.parse import quote, urlsplit

from jupyter_core.utils import ensure_async
from jupyter_server.base.call_context import CallContext
from jupyter_server.base.handlers import APIHandler, JupyterHandler
from jupyter_server_proxy.handlers import ProxyHandler
from tornado import web
from tornado.websocket import WebSocketClosedError, WebSocketHandler

from coiled_lab import config
from coiled_lab.control import limits
from coiled_lab.control.callers import Caller
from coiled_lab.control.manager import ClusterManager
from coiled_lab.errors import Conflict, quoted
from coiled_lab.logs import LEVELS, since_from
from coiled_lab.schema import form_schema
from coiled_lab.spec import MAX_TEXT, describe_fields

from . import dashboard
from .errors import BadRequest, TooLarge, error_body, http_status
from .service import Service

API = "/coiled-lab/api"
AUTH_RESOURCE = "coiled-lab"  # for deployments whose Jupyter authorizer restricts resources
_MAX_LOG_LIMIT = 100_000


class CoiledLabMixin:
    """Authentication and error mapping shared by every coiled-lab route."""

    service: Service
    manager: ClusterManager
    caller: Caller
    body_limit = "api.max-body"  # the config key of the largest body this route reads

    def initialize(self, service: Service) -> None:
        self.service = service

    async def prepare(self) -> None:
        user = self.service.kernel_user(self.request)
        if user is None:
            await super().prepare()  # Jupyter's auth: raises 403 without a user
            await self._authorize()
        else:
            # The kernel token: same host check as Jupyter, no cookie, hence no XSRF to check.
            CallContext.set(CallContext.JUPYTER_HANDLER, self)
            if not self.check_host():
                raise web.HTTPError(403)
            self.current_user = self._jupyter_current_user = user
        self.caller = self.service.caller_of(self.current_user)
        self.manager = await self.service.manager()

    async def _authorize(self) -> None:
        """Let the deployment's Jupyter authorizer restrict coiled-lab like any other resource."""
        user = self.current_user
        if user is None:
            return
        action = "read" if self.request.method in ("GET", "HEAD") else "write"
        if not await ensure_async(self.authorizer.is_authorized(self, user, action, AUTH_RESOURCE)):
            raise web.HTTPError(403, "not authorized to use coiled-lab")

    def get_login_url(self) -> str:
        """APIs, sockets and the dashboard answer 403 without auth; they never redirect."""
        raise web.HTTPError(403)

    def check_xsrf_cookie(self) -> None:
        """Checked once the user is known (Jupyter's ``prepare`` asks again), never before:
        tornado asks before ``prepare``, and JupyterHub's OAuth (the team service) replaces
        Jupyter's check with one that would refuse a token-authenticated request then."""
        if not hasattr(self, "_jupyter_current_user"):
            return
        super().check_xsrf_cookie()  # type: ignore[misc]

    def send_error(self, status_code: int = 500, **kwargs: Any) -> None:
        exc = kwargs.get("exc_info", (None, None, None))[1]
        super().send_error(http_status(exc) or status_code, **kwargs)

    def write_error(self, status_code: int, **kwargs: Any) -> None:
        exc = kwargs.get("exc_info", (None, None, None))[1]
        self.set_header("Content-Type", "application/json")
        self.finish(json.dumps(error_body(exc, status_code)))

    def log_exception(self, typ: Any, value: Optional[BaseException], tb: Any) -> None:
        if http_status(value) is not None:
            # A client error, already answered; its message may quote the request's values.
            self.log.debug("coiled-lab: %s %s answered %s", self.request.method, self.request.path, http_status(value))
            return
        super().log_exception(typ, value, tb)

    # -- parsing ---------------------------------------------------------------------------
    def json_body(self) -> dict[str, Any]:
        """The body as a JSON object; an empty body is ``{}``; one over the route's size
        limit is refused (413) before it is parsed."""
        raw = self.request.body
        limit = int(config.get(self.body_limit))
        if len(raw) > limit:
            raise TooLarge(f"body: {len(raw)} bytes is more than this route reads ({limit} bytes, "
                           f"coiled-lab.{self.body_limit})", "body")
        if not raw or not raw.strip():
            return {}
        try:
            data = json.loads(raw)
        except (ValueError, RecursionError):
            raise BadRequest("the body is not valid JSON", "body") from None
        if not isinstance(data, dict):
            raise BadRequest(f"expected a JSON object, got {type(data).__name__}", "body")
        return data

    def query(self, name: str) -> Optional[str]:
        return self.get_argument(name, None)

    def query_int(self, name: str, default: Optional[int], low: int, high: int) -> Optional[int]:
        text = self.query(name)
        if text is None or text == "":
            return default
        try:
            value = int(text)
        except ValueError:
            value = None
        if value is None or not low <= value <= high:
            raise BadRequest(f"{name}: {quoted(text)} is not allowed; expected an integer from {low} to {high}", name)
        return value

    def query_since(self) -> Optional[float]:
        """``?since=``: epoch seconds, an ISO time or a duration ago; 400 naming it otherwise."""
        text = self.query("since")
        if text is not None and len(text) > MAX_TEXT:  # the message below would repeat it whole
            raise BadRequest(f"since: {quoted(text)} is too long for a time (at most {MAX_TEXT} characters)", "since")
        try:
            return since_from(text)
        except (ValueError, KeyError, TypeError, OverflowError) as exc:
            raise BadRequest(str(exc) if str(exc).startswith("since:") else f"since: {exc}", "since") from None

    def query_flag(self, name: str) -> bool:
        text = (self.query(name) or "false").lower()
        if text not in ("true", "false", "1", "0", "yes", "no"):
            raise BadRequest(f"{name}: {quoted(text)} is not allowed; expected true or false", name)
        return text in ("true", "1", "yes")

    def write_json(self, data: Any, status: int = 200) -> None:
        self.set_status(status)
        self.set_header("Content-Type", "application/json")
        self.finish(json.dumps(data))


class CoiledLabHandler(CoiledLabMixin, APIHandler):
    pass


# == REST =================================================================================
class ClustersHandler(CoiledLabHandler):
    body_limit = "api.max-environment-body"  # a create may carry the kernel's environment

    @web.authenticated
    async def get(self) -> None:
        clusters = await self.manager.list_json(live_only=self.query_flag("live"), caller=self.caller)
        self.set_header("Content-Type", "application/json")
        self.finish('{"clusters": ' + clusters + "}")

    @web.authenticated
    async def post(self) -> None:
        body = self.json_body()
        environment = body.pop("environment", None)  # what package sync installs: not a spec field
        self.write_json(await self.manager.create(body, environment, caller=self.caller), status=201)


class EnvironmentsHandler(CoiledLabHandler):
    """An environment sent ahead of a create (the sidebar's, through the notebook's kernel)."""

    body_limit = "api.max-environment-body"

    @web.authenticated
    async def post(self) -> None:
        body = self.json_body()
        self.write_json(await asyncio.to_thread(self.manager.stage_environment, body), status=201)


class EnvironmentHandler(CoiledLabHandler):
    @web.authenticated
    async def get(self, env_hash: str) -> None:
        """The summary of a kept environment, and whether a backend's bucket has it built."""
        self.write_json(await self.manager.environment_built(env_hash, self.query("backend") or "aws",
                                                            self.query("region")))


class ClusterHandler(CoiledLabHandler):
    @web.authenticated
    async def get(self, cluster: str) -> None:
        self.write_json(await self.manager.get(cluster, caller=self.caller))

    @web.authenticated
    async def patch(self, cluster: str) -> None:
        self.write_json(await self.manager.update(cluster, self.json_body(), caller=self.caller))

    @web.authenticated
    async def delete(self, cluster: str) -> None:
        # Stopping happens in the background: 202, then watch the events.
        self.write_json(await self.manager.stop(cluster, caller=self.caller), status=202)


class LogsHandler(CoiledLabHandler):
    @web.authenticated
    async def get(self, cluster: str) -> None:
        level = self.query("level")
        if level and level.upper() not in LEVELS:
            raise BadRequest(f"level: {quoted(level)} is not allowed; allowed: {', '.join(LEVELS)}", "level")
        since = self.query_since()
        records = await self.manager.logs(
            cluster,
            since=since,
            instance=self.query("instance"),
            q=self.query("q"),
            level=level,
            limit=self.query_int("limit", 1000, 0, _MAX_LOG_LIMIT) or None,
            caller=self.caller,
        )
        self.write_json({"logs": records})


class ConnectionHandler(CoiledLabHandler):
    @web.authenticated
    async def get(self, cluster: str) -> None:
        connection = await self.manager.connection(cluster, caller=self.caller)
        self.set_header("Cache-Control", "no-store")  # it holds the cluster's TLS key
        self.write_json(connection)


class NotificationsHandler(CoiledLabHandler):
    @web.authenticated
    async def get(self, cluster: str) -> None:
        self.write_json({"notifications": await self.manager.notifications(cluster, caller=self.caller)})


class UsageHandler(CoiledLabHandler):
    @web.authenticated
    async def get(self, cluster: str) -> None:
        since = self.query_since()
        self.write_json(await self.manager.usage(cluster, since, caller=self.caller))


class UsagePlotHandler(CoiledLabMixin, JupyterHandler):
    """``/clusters/{id}/usage/plot``: the usage plots as one standalone HTML page (BokehJS
    inlined, no CDN) for the sidebar's and the notebook widget's iframes; see
    :mod:`coiled_lab.usage_plot` for why. A JupyterHandler, not an APIHandler: the API's
    Content-Security-Policy (``default-src 'none'``) would block the page's own scripts."""

    @web.authenticated
    async def get(self, cluster: str) -> None:
        from coiled_lab.usage_plot import html_page

        record = await self.manager.get(cluster, caller=self.caller)
        try:
            usage = await self.manager.usage(cluster, wait=None, caller=self.caller)
        except Conflict:  # not running (yet, or any more): the page says there is nothing to plot
            usage = {}
        # Building the page takes a few hundred ms of CPU: off the server's event loop.
        page = await asyncio.get_running_loop().run_in_executor(None, html_page, record, usage)
        body = page.encode()
        if "gzip" in self.request.headers.get("Accept-Encoding", ""):
            import gzip

            body = gzip.compress(body, 6)
            self.set_header("Content-Encoding", "gzip")
        self.set_header("Content-Type", "text/html; charset=utf-8")
        self.set_header("Cache-Control", "no-store")
        self.finish(body)


class EstimateHandler(CoiledLabHandler):
    @web.authenticated
    async def post(self) -> None:
        self.write_json(await self.manager.estimate(self.json_body(), caller=self.caller))


class CatalogHandler(CoiledLabHandler):
    """A region's catalog is hundreds of instance types, the same object while the
    backend's cache keeps it: its JSON text is kept beside it and made again only for a
    new one (encoding it took a third of the server's loop under load)."""

    @web.authenticated
    async def get(self) -> None:
        backend, region = self.query("backend"), self.query("region")
        catalog = await self.manager.catalog(backend, region)
        kept = self.service.encoded_catalogs.get((backend, region))
        if kept is None or kept[0] is not catalog:
            kept = self.service.encoded_catalogs[(backend, region)] = (catalog, json.dumps(catalog))
        self.set_header("Content-Type", "application/json")
        self.finish(kept[1])


class ReachHandler(CoiledLabHandler):
    """Who ``allow_ingress_from: me`` is from this server (for the form's hint)."""

    @web.authenticated
    async def get(self) -> None:
        self.write_json(await self.manager.reach(self.query("backend")))


class DefaultsHandler(CoiledLabHandler):
    """Every ClusterSpec field with the server's default (its dask config) and help, for forms."""

    @web.authenticated
    async def get(self) -> None:
        self.write_json({"fields": describe_fields()})


class SchemaHandler(CoiledLabHandler):
    """ClusterSpec's JSON schema with this server's defaults and limits: what forms are built from."""

    @web.authenticated
    async def get(self) -> None:
        self.write_json(form_schema(self.query("backend") or None, limits.for_forms(self.caller)))


class CleanupHandler(CoiledLabHandler):
    @web.authenticated
    async def post(self) -> None:
        dry_run = self.json_body().get("dry_run", False)
        if not isinstance(dry_run, bool):
            raise BadRequest("dry_run: expected true or false", "dry_run")
        # 200 even when a backend failed: its error is in "errors", the others were cleaned.
        self.write_json(await self.manager.cleanup(dry_run=dry_run, caller=self.caller))


class MeHandler(CoiledLabHandler):
    """``/me``: whom this page acts for, so the lab shows admins their views (the activity
    log, each cluster's owner). Telling it grants nothing: every route checks for itself."""

    @web.authenticated
    async def get(self) -> None:
        self.write_json({"name": self.caller.name, "admin": self.caller.admin, "team": self.service.team})


class AuditHandler(CoiledLabHandler):
    """``/audit?after=&limit=&user=&cluster=&newest=``: who created, scaled and stopped what,
    when, at what estimated $/hour, and what the limits refused (admins only: 403
    otherwise); oldest first, the first ``limit`` rows after ``after`` or the latest ones."""

    @web.authenticated
    async def get(self) -> None:
        rows = await self.manager.audit(
            self.caller, after=self.query_int("after", 0, 0, 2**63 - 1) or 0,
            limit=self.query_int("limit", 1000, 1, _MAX_LOG_LIMIT) or 1000,
            user=self.query("user") or None, cluster=self.query("cluster") or None, newest=self.query_flag("newest"),
        )
        self.write_json({"audit": rows})


class CredentialsHandler(CoiledLabHandler):
    """Status out, secrets in. Reading profiles and key files is blocking: an executor does it.
    In the team service they are the service's own: admins only."""

    @web.authenticated
    async def get(self) -> None:
        self.service.require_admin(self.caller, "the service's cloud credentials")
        loop = asyncio.get_running_loop()
        self.write_json(await loop.run_in_executor(None, self.service.credentials.status))

    @web.authenticated
    async def put(self) -> None:
        self.service.require_admin(self.caller, "the service's cloud credentials")
        body = self.json_body()
        loop = asyncio.get_running_loop()
        self.write_json(await loop.run_in_executor(None, self.service.put_credentials, body))


# == events ===============================================================================
class EventsHandler(CoiledLabMixin, JupyterHandler, WebSocketHandler):
    """``/events?cluster=&after=``: persisted events after ``after`` (a sequence number),
    then live ones, as JSON text messages. Clients only listen."""

    cluster_id: Optional[str] = None
    after: Optional[int] = None
    _subscription: Any = None
    _pump: Optional[asyncio.Future] = None

    @web.authenticated
    async def get(self, *args: Any, **kwargs: Any) -> None:
        # Parse before the upgrade, so bad input is an HTTP 4xx rather than a closed socket.
        cluster = self.query("cluster")
        self.after = self.query_int("after", None, 0, 2**63 - 1)
        self.cluster_id = (await self.manager.get(cluster, caller=self.caller))["id"] if cluster else None
        await super().get(*args, **kwargs)

    def open(self, *args: Any, **kwargs: Any) -> None:
        # Subscribe before anything else: whatever is published from here on is delivered.
        self._subscription = self.manager.subscribe(self.cluster_id, caller=self.caller)
        self.service.sockets.add(self)
        self._pump = asyncio.ensure_future(self._send())

    async def _send(self) -> None:
        last = self.after
        try:
            if last is not None:
                while page := self.manager.events_since(last, self.cluster_id, caller=self.caller):
                    for event in page:
                        await self.write_message(json.dumps(event))
                        last = event["seq"]
            async for event in self._subscription:
                if event.seq is not None and last is not None and event.seq <= last:
                    continue  # already sent by the replay
                await self.write_message(json.dumps(event.to_json()))
        except WebSocketClosedError:
            pass

    def on_message(self, message: Any) -> None:
        """Clients have nothing to say."""

    def on_close(self) -> None:
        if self._subscription is not None:
            self._subscription.close()
        if self._pump is not None:
            self._pump.cancel()
        self.service.sockets.discard(self)


# == the dashboard ========================================================================
class DashboardLinkHandler(CoiledLabHandler):
    """``/coiled-lab/clusters/{id}/dashboard/{path}``, the link every front door hands out:
    authenticated by Jupyter, it only redirects to the cluster's keyed prefix (see
    :mod:`.dashboard` for why a dashboard never runs with the Jupyter user's authority)."""

    @web.authenticated
    async def get(self, cluster: str, path: str) -> None:
        record = await self.manager.get(cluster, caller=self.caller)
        if not record.get("dashboard"):
            raise Conflict(f"cluster {record['name']!r} is {record['status']}; it has no dashboard")
        target = dashboard.keyed_path(self.base_url, self.settings["cookie_secret"], record["id"], path or "/")
        query = dashboard.without_jupyter_auth(self.request.query)
        self.set_header("Cache-Control", "no-store")
        self.set_header("Referrer-Policy", "no-referrer")
        self.redirect(target + ("?" + query if query else ""))

    @web.authenticated
    async def head(self, cluster: str, path: str) -> None:
        await self.get(cluster, path)


class DashboardProxyHandler(CoiledLabMixin, ProxyHandler):
    """``/coiled-lab/dashboards/{id}/{key}/{path}``: HTTP and WebSocket (bokeh) to that
    cluster's scheduler dashboard and nowhere else, authenticated by the key alone. The
    target comes from the store's record of the cluster, and jupyter-server-proxy checks it
    against the allow-list of live clusters' dashboard hosts."""

    target: tuple[str, int]

    async def prepare(self) -> None:
        # Every answer from here on, errors included, gets the dashboard's headers.
        self._transforms = [*self._transforms, dashboard.PolicyTransform(self.request)]
        # Not Jupyter's authentication: no cookie or token is a credential here, the key is.
        # Jupyter's host check (DNS rebinding) still applies.
        CallContext.set(CallContext.JUPYTER_HANDLER, self)
        self.current_user = self._jupyter_current_user = None
        if not self.check_host():
            raise web.HTTPError(403)
        cluster_id, key = self.path_args[0], self.path_args[1]
        expected = dashboard.dashboard_key(self.settings["cookie_secret"], cluster_id)
        if not hmac.compare_digest(key.encode(), expected.encode()):
            raise web.HTTPError(403, "this dashboard link is not valid; open the dashboard again from JupyterLab")
        self.current_user = self._jupyter_current_user = dashboard.VIEWER
        self.manager = await self.service.manager()
        record = await self.manager.get(cluster_id)  # the key names the cluster: no caller to check
        link = record.get("dashboard")
        if not link:
            raise Conflict(f"cluster {record['name']!r} is {record['status']}; it has no dashboard")
        parts = urlsplit(link)
        self.target = (parts.hostname or "", parts.port or 80)
        # Redirects from the dashboard are rewritten under this prefix.
        self.proxy_base = f"{dashboard.KEYED_PREFIX}/{quote(cluster_id, safe='')}/{key}"
        self.request.query = dashboard.without_jupyter_auth(self.request.query)

    def check_origin(self, origin: Optional[str] = None) -> bool:
        """The page runs in an opaque origin (``Origin: null``): the key is the credential."""
        return True

    def proxy_request_headers(self) -> Any:
        """Jupyter's credentials stay here: the dashboard runs on the cluster's machines."""
        headers = super().proxy_request_headers()
        for name in dashboard.JUPYTER_CREDENTIAL_HEADERS:
            if name in headers:
                del headers[name]
        return headers

    async def proxy(self, host: str, port: int, path: str) -> None:
        """jupyter-server-proxy's, with a dashboard that does not answer (its scheduler
        stopped a moment ago, or died) told as 502, not as a failure of this server."""
        try:
            return await super().proxy(host, port, path)
        except OSError as exc:  # connection refused or reset: tornado raises it as it is
            why = str(exc)
        except web.HTTPError as exc:
            if exc.status_code not in (500, 599):
                raise
            why = exc.log_message or f"HTTP {exc.status_code}"
        raise web.HTTPError(502, f"the dashboard of cluster {self.path_args[0]} did not answer ({why}); "
                                 "its scheduler may have stopped")

    async def http_get(self, cluster: str, key: str, path: str) -> None:
        return await self.proxy(*self.target, path)

    async def open(self, cluster: str, key: str, path: str) -> None:
        return await self.proxy_open(*self.target, path)

    def post(self, cluster: str, key: str, path: str) -> Awaitable[None]:
        return self.proxy(*self.target, path)

    def put(self, cluster: str, key: str, path: str) -> Awaitable[None]:
        return self.proxy(*self.target, path)

    def delete(self, cluster: str, key: str, path: str) -> Awaitable[None]:
        return self.proxy(*self.target, path)

    def head(self, cluster: str, key: str, path: str) -> Awaitable[None]:
        return self.proxy(*self.target, path)

    def patch(self, cluster: str, key: str, path: str) -> Awaitable[None]:
        return self.proxy(*self.target, path)

    def options(self, cluster: str, key: str, path: str) -> Awaitable[None]:
        return self.proxy(*self.target, path)


def routes(service: Service) -> list[tuple[str, type, dict[str, Any]]]:
    """Every route of the extension (the server prefixes its base URL)."""
    cluster = r"/clusters/([^/]+)"
    kwargs = {"service": service}
    return [
        (f"{API}/clusters", ClustersHandler, kwargs),
        (f"{API}{cluster}", ClusterHandler, kwargs),
        (f"{API}{cluster}/logs", LogsHandler, kwargs),
        (f"{API}{cluster}/connection", ConnectionHandler, kwargs),
        (f"{API}{cluster}/notifications", NotificationsHandler, kwargs),
        (f"{API}{cluster}/usage", UsageHandler, kwargs),
        (f"{API}{cluster}/usage/plot", UsagePlotHandler, kwargs),
        (f"{API}/estimate", EstimateHandler, kwargs),
        (f"{API}/environments", EnvironmentsHandler, kwargs),
        (f"{API}/environments/([0-9a-f]{{32}})", EnvironmentHandler, kwargs),
        (f"{API}/catalog", CatalogHandler, kwargs),
        (f"{API}/defaults", DefaultsHandler, kwargs),
        (f"{API}/schema", SchemaHandler, kwargs),
        (f"{API}/reach", ReachHandler, kwargs),
        (f"{API}/cleanup", CleanupHandler, kwargs),
        (f"{API}/credentials", CredentialsHandler, kwargs),
        (f"{API}/me", MeHandler, kwargs),
        (f"{API}/audit", AuditHandler, kwargs),
        (f"{API}/events", EventsHandler, kwargs),
        (f"/{dashboard.LINK_PREFIX}/([^/]+)/dashboard(/.*|)", DashboardLinkHandler, kwargs),
        (
            f"/{dashboard.KEYED_PREFIX}/([^/]+)/([^/]+)(/.*|)",
            DashboardProxyHandler,
            {**kwargs, "host_allowlist": service.dashboard_host_allowed},
        ),
    ]
