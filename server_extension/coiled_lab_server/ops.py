"""What operators of the team service look at: ``/health``, ``/metrics`` and JSON logs.

- ``/health`` answers without authentication (load balancers, the hub's operators): the
  store reachable or not, this instance the leader or a read-only follower, the version.
  200 when the store answers, 503 otherwise. It names no cluster and no user.
- ``/metrics`` is Prometheus' text format, for coiled-lab admins (a hub token of an admin
  or of a member of ``coiled-lab.admin-group``): clusters by state, launches, failures and
  the $/hour of what runs, counted from the store at each scrape (so every instance, leader
  or follower, tells the same, and a restart loses nothing).
- Logs are one JSON object per line (time, level, event, logger, and the request's user,
  method, path, status and duration when there is one), for a log shipper to index.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from typing import Any, Iterator

from jupyter_server.base.handlers import JupyterHandler
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from tornado import web

from coiled_lab import __version__
from coiled_lab.control.limits import ADMITTED_PER_HOUR
from coiled_lab.control.states import State

from .errors import error_body
from .service import Service


def _health(service: Service) -> tuple[int, dict[str, Any]]:
    manager = service.manager_as_is
    body: dict[str, Any] = {"version": __version__, "role": "starting", "store": "ok"}
    if manager.started:
        body["role"] = "leader" if manager.owner else "follower"
    try:
        manager.store.versions(live_only=True)
    except Exception as exc:  # noqa: BLE001 - whatever the store says is the answer
        body["store"] = f"unreachable: {type(exc).__name__}: {exc}"
        return 503, body
    return 200, body


class HealthHandler(JupyterHandler):
    """``/health``: no credentials needed, nothing private told."""

    def initialize(self, service: Service) -> None:
        self.service = service

    async def prepare(self) -> None:
        """No authentication (the health check of a load balancer has no token)."""

    def check_xsrf_cookie(self) -> None:
        """GET only: nothing to protect."""

    async def get(self) -> None:
        status, body = await asyncio.to_thread(_health, self.service)
        self.set_status(status)
        self.set_header("Content-Type", "application/json")
        self.set_header("Cache-Control", "no-store")
        self.finish(json.dumps(body))


class StoreCollector:
    """Prometheus metrics read from the store at each scrape."""

    def __init__(self, service: Service):
        self.service = service

    def collect(self) -> Iterator[Any]:
        manager = self.service.manager_as_is
        records = manager.store.list_clusters() if manager.started else []
        by_state = GaugeMetricFamily("coiled_lab_clusters", "Clusters in the store, by state", labels=["state"])
        counts = {str(s): 0 for s in State}
        per_hour = 0.0
        for rec in records:
            counts[str(rec.status)] = counts.get(str(rec.status), 0) + 1
            if rec.live:
                cost = rec.state.get("cost") or {}
                per_hour += float(cost.get("per_hour") or rec.state.get(ADMITTED_PER_HOUR) or 0.0)
        for state, n in counts.items():
            by_state.add_metric([state], n)
        yield by_state
        yield CounterMetricFamily("coiled_lab_launches", "Clusters ever requested", value=len(records))
        yield CounterMetricFamily("coiled_lab_failures", "Clusters that ended in error",
                                  value=counts.get(str(State.error), 0))
        yield GaugeMetricFamily("coiled_lab_cost_per_hour_dollars", "Estimated $/hour of the live clusters",
                                value=per_hour)
        yield GaugeMetricFamily("coiled_lab_leader", "1 if this instance manages the store, 0 if it follows",
                                value=1 if manager.owner else 0)


class MetricsHandler(JupyterHandler):
    """``/metrics``: for coiled-lab admins only (they are the service's operators)."""

    def initialize(self, service: Service, registry: CollectorRegistry) -> None:
        self.service = service
        self.registry = registry

    def get_login_url(self) -> str:
        raise web.HTTPError(403)

    def write_error(self, status_code: int, **kwargs: Any) -> None:
        """The API's JSON error shape (the service has no HTML templates)."""
        exc = kwargs.get("exc_info", (None, None, None))[1]
        self.set_header("Content-Type", "application/json")
        self.finish(json.dumps(error_body(exc, status_code)))

    @web.authenticated
    async def get(self) -> None:
        caller = self.service.caller_of(self.current_user)
        if not caller.admin:
            raise web.HTTPError(403, "metrics are for coiled-lab admins")
        text = await asyncio.to_thread(generate_latest, self.registry)
        self.set_header("Content-Type", "text/plain; version=0.0.4; charset=utf-8")
        self.finish(text)


def routes(service: Service) -> list[tuple[str, type, dict[str, Any]]]:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(StoreCollector(service))  # type: ignore[arg-type]
    return [
        ("/health", HealthHandler, {"service": service}),
        ("/metrics", MetricsHandler, {"service": service, "registry": registry}),
    ]


# == logs ================================================================================
_STANDARD = set(vars(logging.makeLogRecord({}))) | {"message", "asctime", "color", "end_color"}


class JSONFormatter(logging.Formatter):
    """One JSON object per line; fields passed with ``extra=`` (user, cluster, method,
    path, status, duration_ms) become keys of their own."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "event": record.getMessage(),
        }
        for key, value in vars(record).items():
            if key not in _STANDARD and not key.startswith("_"):
                entry[key] = value if isinstance(value, (str, int, float, bool, type(None))) else str(value)
        if record.exc_info:
            entry["traceback"] = self.formatException(record.exc_info)
        return json.dumps(entry)


def log_request(handler: Any) -> None:
    """Tornado's ``log_function``: each request as one JSON line, with who asked."""
    status = handler.get_status()
    level = logging.INFO if status < 400 else logging.WARNING if status < 500 else logging.ERROR
    user = getattr(handler, "_jupyterhub_user", None) or getattr(handler, "_jupyter_current_user", None)
    path = handler.request.path
    if path.endswith("/health") or path.endswith("/metrics"):
        level = logging.DEBUG  # scraped every few seconds: not worth a line each
    logging.getLogger("coiled_lab.serve.access").log(level, "request", extra={
        "method": handler.request.method, "path": path, "status": status,
        "duration_ms": round(1000 * handler.request.request_time(), 1),
        "user": getattr(user, "username", None),
    })
