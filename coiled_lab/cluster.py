"""``coiled_lab.Cluster``: what a user holds.

A ``distributed.deploy.Cluster`` whose machines are run by the control plane: the
Jupyter server extension when there is one, else a manager in this process. Creating
one asks the control plane for a cluster (or attaches to a live one by name), waits for
it to run, then connects to its scheduler over the cluster's own TLS.
"""

from __future__ import annotations

import asyncio
import html
import logging
import math
from contextlib import suppress
from typing import Any, Optional

from distributed.core import rpc
from distributed.deploy.cluster import Cluster as _DistributedCluster
from distributed.utils import Log, Logs

from .connect import get_control
from .errors import ClusterError, NotFound
from .logs import LogRecord
from .environment import for_request
from .spec import ClusterSpec, ClusterSpecError, parse_spec, revise
from .tls import TLSMaterial

logger = logging.getLogger("coiled_lab.cluster")


class Cluster(_DistributedCluster):
    """A Dask cluster run by coiled-lab.

    >>> cluster = Cluster(n_workers=4)                  # new cluster, default backend
    >>> cluster = Cluster(name="etl", backend="aws")    # attach to "etl" if live, else create it
    >>> client = cluster.get_client()

    Every ClusterSpec field is a keyword argument, and so are Coiled's names for them
    (``n_workers=[2, 10]`` adapts between the bounds, ``compute_purchase_option``,
    ``backend_options``, ``scheduler_options``: :mod:`coiled_lab.coiled_names`).
    ``wait_for_workers`` (default True: all of them) is how many workers must be ready
    before the constructor returns: False or 0 for none, a number, or a fraction of
    ``n_workers``. ``shutdown_on_close`` (default True)
    makes ``close()`` stop the cluster; with False it only disconnects. ``send_credentials``
    (default False) calls :meth:`send_credentials` once the cluster runs: True for the
    backend's cloud, or a provider's name (``"aws"``, ``"gcp"``).
    """

    def __init__(
        self,
        name: Optional[str] = None,
        *,
        asynchronous: bool = False,
        loop=None,
        timeout: Optional[float] = None,
        shutdown_on_close: bool = True,
        wait_for_workers: bool | int | float = True,
        send_credentials: bool | str = False,
        control: Any = None,
        **spec_fields: Any,
    ):
        fields = dict(spec_fields)
        if name is not None:
            fields["name"] = name
        self._spec = parse_spec(fields)  # bad input fails here, before any request
        if isinstance(send_credentials, str):
            from .credentials import PROVIDERS

            if send_credentials not in PROVIDERS:
                raise ClusterSpecError(f"send_credentials: {send_credentials!r} is not True, False or one of "
                                       f"{', '.join(PROVIDERS)}", "send_credentials")
        # What the user set, in the spec's own names (n_workers=[2, 10] also set adaptive).
        self._explicit = set(self._spec.model_fields_set)
        self._start_workers = _check_wait_for_workers(wait_for_workers)
        self._control = control if control is not None else get_control()
        self._timeout = timeout
        self.shutdown_on_close = shutdown_on_close
        self.cluster_id: Optional[str] = None
        self.record: dict[str, Any] = {}
        self.security = None
        self._events_task: Optional[asyncio.Task] = None
        self._send_credentials_on_start = send_credentials
        self._credentials_tasks: dict[str, asyncio.Task] = {}  # provider -> its refresh loop
        self._starting: Optional[asyncio.Future] = None  # the start, once asked (await or sync)
        super().__init__(asynchronous=asynchronous, loop=loop, name=name)
        if not self.called_from_running_loop:
            self._loop_runner.start()
            self.sync(self.__aenter__)

    # -- start / attach ----------------------------------------------------------------
    def __await__(self):
        """``await Cluster(..., asynchronous=True)`` (and ``async with``) starts it, as
        distributed's SpecCluster does; made in a running loop, nothing has started yet."""
        async def started() -> "Cluster":
            if self._starting is None:
                self._starting = asyncio.ensure_future(self._start())
            try:
                await asyncio.shield(self._starting)
            except Exception as exc:
                raise _one_line(exc) from None
            return self

        return started().__await__()

    async def _start(self) -> None:
        control = self._control
        record = None
        if self._spec.name:
            with suppress(NotFound):
                found = await control.get(self._spec.name)
                if found["status"] not in ("stopped", "error"):
                    record = found
                    self._check_attach(found)
        if record is None:
            environment = await asyncio.to_thread(for_request, self._spec)  # the kernel's, taken here
            record = await control.create(self._spec.model_dump(mode="json", include=self._explicit), environment)
        self.cluster_id = record["id"]
        self.name = record["name"]
        self.record = record
        # The cluster's own spec from now on: one attached by name was not made from this
        # kernel's fields and defaults, which may name another backend or size.
        self._spec = revise(record["spec"])
        self._events_task = asyncio.ensure_future(self._follow_events())
        record = await self._until_started()
        self.record = record
        if record["status"] not in ("running", "provisioning", "scaling"):
            raise ClusterError(f"cluster {record['name']} is {record['status']}: {record.get('message')}")
        conn = await control.connection(self.cluster_id)
        self.security = TLSMaterial(conn["tls"]["cert"], conn["tls"]["key"]).security()
        self.scheduler_comm = rpc(conn["address"], connection_args=self.security.get_connection_args("client"))
        await super()._start()
        if self._send_credentials_on_start:
            on_start = self._send_credentials_on_start
            await self._send_credentials(on_start if isinstance(on_start, str) else None)

    async def _until_started(self) -> dict[str, Any]:
        """The record once the cluster runs, or (``wait_for_workers`` less than all) once its
        scheduler is reached and that many workers are ready; or once it failed."""
        control, cluster_id = self._control, self.cluster_id
        if self._start_workers is True:
            return await control.wait(cluster_id, ("running",), self._timeout)

        async def enough() -> dict[str, Any]:
            while True:
                # Woken at once by running or a final state; the counts are read again each second.
                with suppress(asyncio.TimeoutError):
                    return await asyncio.wait_for(control.wait(cluster_id, ("running",)), 1.0)
                record = await control.get(cluster_id)
                if record["dashboard"] and record["workers"]["ready"] >= self._workers_needed(record):
                    return record

        return await asyncio.wait_for(enough(), self._timeout)

    def _workers_needed(self, record: dict[str, Any]) -> int:
        """``wait_for_workers`` as a number of workers: a fraction is of the target."""
        wanted = self._start_workers
        if isinstance(wanted, float):
            return math.ceil(wanted * record["workers"]["target"])
        return min(int(wanted), record["workers"]["target"])

    def _check_attach(self, found: dict[str, Any]) -> None:
        """Attaching by name to a cluster with a different backend would surprise."""
        if "backend" in self._explicit and found["backend"] != self._spec.backend:
            raise ClusterError(
                f"a live cluster named {found['name']!r} runs on backend {found['backend']!r}, "
                f"not {self._spec.backend!r}; pick another name"
            )

    async def _follow_events(self) -> None:
        """Keep ``record`` current from the control plane's event stream."""
        with suppress(asyncio.CancelledError):
            async for _event in self._control.events(self.cluster_id):
                with suppress(Exception):
                    self.record = await self._control.get(self.cluster_id)

    @property
    def spec(self) -> ClusterSpec:
        """What the cluster is made of: the fields given here until it starts, then its
        recorded spec (for one attached by name, the record's, not this kernel's defaults)."""
        return self._spec

    # -- scaling ---------------------------------------------------------------------
    def scale(self, n: int = 0, memory=None, cores=None) -> Any:
        """Ask for ``n`` workers; returns at once (``wait_for_workers(n)`` to wait)."""
        if memory is not None or cores is not None:
            raise ValueError("scale by memory or cores is not supported; give a number of workers")
        return self.sync(self._scale, n)

    async def _scale(self, n: int) -> None:
        self.record = await self._control.scale(self.cluster_id, int(n))
        self._spec = revise(self.record["spec"])

    def adapt(self, minimum: int = 0, maximum: Optional[int] = None, **options: Any) -> Any:
        """Grow and shrink between ``minimum`` and ``maximum`` workers as the work asks (the
        same as ``n_workers=[minimum, maximum]``). The control plane decides, not this kernel:
        the cluster keeps adapting after the kernel exits. How often it looks and how long
        it waits before shrinking are the server's ``coiled-lab.adaptive.*`` settings;
        ``adapt(maximum=None)`` is refused, and ``cluster.adapt(0, 0)`` is no bounds at all."""
        if options:
            raise ClusterSpecError(
                f"adapt: {sorted(options)[0]!r} is not taken here: the control plane adapts the cluster, with the "
                "server's coiled-lab.adaptive.interval and coiled-lab.adaptive.wait-count; give minimum and maximum",
                "adaptive")
        if maximum is None:
            raise ClusterSpecError("adapt: maximum is needed: the most workers the cluster may grow to", "adaptive")
        bounds = None if (minimum, maximum) == (0, 0) else [int(minimum), int(maximum)]
        return self.sync(self._adapt, bounds)

    async def _adapt(self, bounds: Optional[list[int]]) -> None:
        self.record = await self._control.adapt(self.cluster_id, bounds)
        self._spec = revise(self.record["spec"])

    def scale_down(self, workers) -> Any:
        """Used by ``Adaptive``: the given workers are already retired by the scheduler."""
        return self.sync(self._scale, max(0, self.record["workers"]["target"] - len(workers)))

    @property
    def requested(self) -> set[str]:
        return {w["name"] for w in self.scheduler_info["workers"].values()} | {
            f"requested-{i}" for i in range(len(self.observed), self.record.get("workers", {}).get("launched", 0))
        }

    @property
    def observed(self) -> set[str]:
        return {w["name"] for w in self.scheduler_info["workers"].values()}

    @property
    def plan(self) -> set[str]:
        target = self.record.get("workers", {}).get("target", 0)
        names = sorted(self.requested)
        return set(names[:target]) | {f"planned-{i}" for i in range(len(names), target)}

    # -- the user's data credentials ------------------------------------------------------
    def send_credentials(self, provider: Optional[str] = None) -> Any:
        """Send this kernel's own short-lived data credentials to every worker (and to
        workers that join later), and keep them fresh until the cluster is closed: AWS STS
        session credentials, or a Google OAuth access token from the kernel's
        application-default credentials. ``provider`` (``"aws"`` or ``"gcp"``) defaults to
        the cluster's cloud (AWS for a local cluster). Never the Jupyter server's
        credentials: see coiled_lab.credentials and coiled_lab.gcp_credentials."""
        return self.sync(self._send_credentials, provider)

    async def _send_credentials(self, provider: Optional[str] = None) -> None:
        from . import credentials

        backend = self._spec.backend  # as recorded (see _start)
        provider = provider or (backend if backend in credentials.PROVIDERS else "aws")
        plugin = await credentials.send(self.scheduler_comm, provider)
        if provider in self._credentials_tasks:
            self._credentials_tasks[provider].cancel()
        self._credentials_tasks[provider] = asyncio.ensure_future(
            credentials.keep_fresh(self.scheduler_comm, plugin, provider))

    # -- information -------------------------------------------------------------------
    def get_notifications(self) -> list[dict[str, Any]]:
        """What coiled-lab told about this cluster (capacity, fallbacks, shutdown soon, idle
        GPUs, budget), oldest first."""
        return self.sync(self._control.notifications, self.cluster_id)

    def get_usage(self, since: Optional[float] = None) -> dict[str, Any]:
        """The scheduler-side watchdog's recent samples (workers, clients, tasks, CPU, memory,
        GPU), from the control plane's copy; ``as_of`` is when the scheduler last answered
        (None while a young cluster's first read has not)."""
        return self.sync(self._control.usage, self.cluster_id, since)

    @property
    def dashboard_link(self) -> str:
        link = self._control.dashboard_url(self.record) if self.record else None
        return link or ""

    async def _get_logs(self, cluster=True, scheduler=True, workers=True) -> Logs:
        records = [LogRecord(**r) for r in await self._control.logs(self.cluster_id, limit=None)]
        logs = Logs()
        if cluster:
            logs["Cluster"] = Log(f"{self.record.get('status')}: {self.record.get('message') or ''}")
        by_instance: dict[str, list[str]] = {}
        for r in records:
            if (r.role == "scheduler" and scheduler) or (r.role == "worker" and workers):
                key = "Scheduler" if r.role == "scheduler" else r.instance
                by_instance.setdefault(key, []).append(r.format())
        for key, lines in by_instance.items():
            logs[key] = Log("\n".join(lines))
        return logs

    def _repr_html_(self, cluster_status=None) -> str:
        r = self.record or {}
        workers = r.get("workers", {})
        rows = [
            ("Status", r.get("status", "unknown") + (f" ({r['message']})" if r.get("message") else "")),
            ("Backend", r.get("backend", self._spec.backend)),
            ("Workers", f"{workers.get('ready', 0)} ready of {workers.get('target', 0)}"),
            ("Cluster id", self.cluster_id or ""),
        ]
        time_left = r.get("time_left") or {}
        left = [f"{k.replace('_', ' ')}: {v / 60:.0f} min" for k, v in time_left.items() if v is not None]
        if left:
            rows.append(("Stops in", ", ".join(left)))
        table = "".join(
            f'<tr><td style="text-align:left"><strong>{html.escape(k)}:</strong> {html.escape(str(v))}</td></tr>'
            for k, v in rows
        )
        return super()._repr_html_(cluster_status=f"<table>{table}</table>")

    def _widget(self):
        """The live cluster widget (used by ``display(cluster)`` in a notebook)."""
        if getattr(self, "_cached_widget", None) is None and self.cluster_id:
            try:
                from .widgets import ClusterWidget
            except ImportError:  # no ipywidgets: distributed falls back to the HTML repr
                return None
            self._cached_widget = ClusterWidget(self.cluster_id, self._control)
        return getattr(self, "_cached_widget", None)

    # -- closing -------------------------------------------------------------------
    async def _close(self) -> None:
        for task in self._credentials_tasks.values():
            task.cancel()
        if self._events_task is not None:
            self._events_task.cancel()
            with suppress(asyncio.CancelledError, Exception):
                await self._events_task
        await super()._close()
        if self.shutdown_on_close and self.cluster_id:
            await self._control.stop(self.cluster_id)
            self.record = await self._control.wait(self.cluster_id, ("stopped",), 120)


def _check_wait_for_workers(value: Any) -> bool | int | float:
    """``wait_for_workers`` as Coiled takes it: True (all), False or 0 (the scheduler only), a
    number of workers, or a fraction of them between 0 and 1."""
    if isinstance(value, bool) or (isinstance(value, int) and value >= 0) or \
            (isinstance(value, float) and 0 <= value <= 1):
        return 0 if value is False else value
    raise ClusterSpecError(f"wait_for_workers: {value!r} is not allowed: expected True (all workers), False (none), "
                           "a number of workers, or a fraction between 0 and 1", "wait_for_workers")


def _one_line(exc: Exception) -> Exception:
    """A cloud library's error (no credentials, unreachable) as the error table tells it;
    coiled-lab's own errors as they are (their message is already that line)."""
    from .errors import CloudProblem, answer

    told = answer(exc)
    if told is not None and type(exc).__module__.startswith(("botocore", "google.", "requests.")):
        return CloudProblem(told.status, told.code, told.message)
    return exc
