"""dask-labextension as a partner: coiled-lab's clusters in its CLUSTERS list, its "+NEW"
and SHUTDOWN acting on them, its panes fed through coiled-lab's dashboard proxy.

dask-labextension 7 keeps the clusters it lists in one module-level manager
(``dask_labextension.manager.manager``) and reads, for each, a few attributes of a dask
``Cluster`` (``scheduler_info``, ``scheduler_address``, ``dashboard_link``) and calls
``close``, ``scale`` and ``adapt``. It has no registration API, so this module keeps that
manager's dicts in step with coiled-lab's live clusters: every cluster with a dashboard is
listed there as a :class:`ClusterView`, and leaves the list when it stops, whoever stopped
it. Its "+NEW" builds clusters with the factory named by ``labextension.factory``; with
``coiled-lab.dask-labextension-factory`` true that factory is :func:`new_cluster`, which
creates a coiled-lab cluster through this server's manager.

Its panes and URL check reach a listed cluster's dashboard at ``dask/dashboard/{key}/…``,
which its own proxy serves from the cluster's ``dashboard_link`` host and port, losing the
path, and only for localhost. :class:`DashboardRedirect` answers those requests for
coiled-lab's clusters with a redirect to coiled-lab's dashboard link, so the panes show the
sandboxed, keyed proxy (:mod:`.dashboard`) as every other front door does; any other key is
dask-labextension's own. Jupyter loads server extensions in name order, so this route
(``coiled_lab_server``) comes before dask-labextension's identical one.
"""

from __future__ import annotations

import asyncio
import importlib.util
import json
import logging
import re
import uuid
from contextlib import suppress
from dataclasses import dataclass
from typing import Any, Optional
from urllib.parse import quote, urlsplit

import dask.config
from jupyter_server.utils import url_path_join

from coiled_lab import config
from coiled_lab.control.notifications import Notice
from coiled_lab.errors import ClusterError, ClusterSpecError, NotFound, Unavailable

from .dashboard import LINK_PREFIX
from .service import Service

logger = logging.getLogger("coiled_lab_server.partner")

# dask-labextension's cluster ids in its URLs (its route's pattern): a UUID's shape.
DASK_KEY = r"(?P<cluster_id>\w+-\w+-\w+-\w+-\w+)"
_KEYS = uuid.UUID("5b0c7a4e-1f0e-4c55-9a43-c0112ed1ab00")  # namespace of the keys of our clusters

# Where dask-labextension's panes are pointed when no coiled-lab cluster is left to show:
# its URL check reads ``individual-plots.json`` there and gets 204, "no dashboard", without
# a console error, and its poll backs off instead of knocking on a stopped cluster's URL.
NO_CLUSTER_PATH = "coiled-lab/no-live-cluster"

# What a plot's path in a dashboard's individual-plots.json may be.
_PLOT_PATH = re.compile(r"(/[A-Za-z0-9_\-]+(\.[A-Za-z0-9]+)?){1,5}")

# Statuses in which a cluster with a dashboard is listed.
_LISTED = frozenset({"running", "scaling"})

_partner: Optional["Partner"] = None  # the one of this server, for the factory dask-labextension imports


def installed() -> bool:
    return importlib.util.find_spec("dask_labextension") is not None


def dask_key(cluster_id: str) -> str:
    """The id a coiled-lab cluster has in dask-labextension's list and URLs: stable, so a
    pane restored after a reload still finds it."""
    return str(uuid.uuid5(_KEYS, cluster_id))


def listed(record: dict[str, Any]) -> bool:
    """Whether dask-labextension should list the cluster: one with a dashboard that is
    not on its way out."""
    return bool(record.get("dashboard")) and record["target"] != "stopped" and record["status"] in _LISTED


class ClusterView:
    """A coiled-lab cluster as dask-labextension's manager reads a dask ``Cluster``: what
    it shows comes from the store and the scheduler's identity, what it does goes to this
    server's manager."""

    def __init__(self, partner: "Partner", cluster_id: str):
        self._partner = partner
        self.cluster_id = cluster_id
        self.scheduler_address = ""
        self.dashboard_link = partner.dashboard_link(cluster_id)
        self.scheduler_info: dict[str, Any] = {"workers": {}}
        self.closing = False  # dask-labextension's SHUTDOWN: it takes the view off its list itself

    async def close(self) -> None:
        """SHUTDOWN: ask for the cluster to stop (the manager sees it through)."""
        self.closing = True
        self._partner.forget(self.cluster_id)
        try:
            await (await self._partner.service.manager()).stop(self.cluster_id)
        except BaseException:
            self.closing = False
            raise

    async def scale(self, n: int) -> None:
        await (await self._partner.service.manager()).scale(self.cluster_id, n)

    def adapt(self, minimum: int = 0, maximum: int = 0, **_: Any) -> "Bounds":
        """ADAPT: the same bounds as ``n_workers=[minimum, maximum]``, kept (and acted on) by
        the control plane. dask-labextension calls this synchronously and shows what it
        returns; the change itself is made in the background, and a refusal (an admin's
        limit) is told as the cluster's notification."""
        bounds = Bounds(int(minimum), int(maximum))
        task = asyncio.ensure_future(self._set_bounds(bounds))
        self._partner.keep(task)
        return bounds

    async def _set_bounds(self, bounds: "Bounds") -> None:
        manager = await self._partner.service.manager()
        try:
            await manager.update(self.cluster_id, {"adaptive": [bounds.minimum, bounds.maximum]})
        except ClusterSpecError as exc:
            manager.notify(self.cluster_id, Notice(f"adapt:{bounds.minimum}-{bounds.maximum}", "adaptive", "warning",
                                                   f"ADAPT in dask-labextension was refused: {exc.message}"))


@dataclass(frozen=True)
class Bounds:
    """What dask-labextension shows of an adaptive cluster."""

    minimum: int
    maximum: int


class Partner:
    """Keeps dask-labextension's cluster list in step with this server's live clusters."""

    def __init__(self, service: Service, base_url: str):
        self.service = service
        self.base_url = base_url
        self.enabled = installed()
        self._claimed: set[str] = set()  # clusters "+NEW" is making: dask-labextension lists them itself
        # Keys of listed clusters that stopped: their URL check may still be on its way (its
        # poll, a pane reloading) and is told "no dashboard" rather than 404.
        self._gone: dict[str, str] = {}
        self._refreshing: dict[str, asyncio.Task] = {}
        self._stale: set[str] = set()  # identities asked for again while one was being read
        self._task: Optional[asyncio.Task] = None
        self._changes: set[asyncio.Task] = set()  # ADAPTs being made
        if self.enabled and config.get("dask-labextension-factory"):
            # Its kwargs stay: they are ClusterSpec fields now.
            dask.config.set({"labextension.factory.module": __name__, "labextension.factory.class": "new_cluster",
                             "labextension.factory.args": []})

    def keep(self, task: asyncio.Task) -> None:
        """Hold a background change until it is done (and cancel it at close)."""
        self._changes.add(task)
        task.add_done_callback(self._changes.discard)

    def routes(self) -> list[tuple[str, type, dict[str, Any]]]:
        if not self.enabled:
            return []
        try:
            from .partner_handlers import DashboardRedirect, NoClusterHandler
        except ImportError as exc:  # a broken install of it must not take coiled-lab down
            logger.warning("coiled-lab: dask-labextension cannot be imported (%s); its CLUSTERS list will not "
                           "show coiled-lab's clusters: reinstall it (pip install 'dask-labextension>=7,<8')", exc)
            self.enabled = False
            return []
        return [
            (f"/dask/dashboard/{DASK_KEY}(?P<proxied_path>.+)", DashboardRedirect, {"partner": self}),
            (f"/{NO_CLUSTER_PATH}/individual-plots.json", NoClusterHandler, {}),
        ]

    def start(self) -> None:
        global _partner
        if self.enabled:
            _partner = self
            self._task = asyncio.ensure_future(self._follow())

    async def close(self) -> None:
        global _partner
        if _partner is self:
            _partner = None
        for task in [self._task, *self._refreshing.values(), *self._changes]:
            if task is not None:
                task.cancel()
                with suppress(asyncio.CancelledError, Exception):
                    await task

    # -- what dask-labextension lists ---------------------------------------------------------
    @property
    def _dask(self) -> Any:
        from dask_labextension.manager import manager

        return manager

    def dashboard_link(self, cluster_id: str) -> str:
        """coiled-lab's link to the cluster's dashboard, a path on this server."""
        return url_path_join(self.base_url, LINK_PREFIX, quote(cluster_id, safe=""), "dashboard/")

    def cluster_of(self, key: str) -> Optional[str]:
        """The coiled-lab cluster dask-labextension lists under ``key``, if it is one of ours."""
        return getattr(self._dask._clusters.get(key), "cluster_id", None)

    async def plots(self, cluster_id: str) -> Optional[dict[str, str]]:
        """The cluster's ``individual-plots.json`` as its scheduler answers it now, or None
        when it does not (it stopped, or died a moment ago). Only names and relative paths
        pass: the answer comes from the cluster's machines."""
        from tornado.httpclient import AsyncHTTPClient

        record = await (await self.service.manager()).get(cluster_id)
        link = record.get("dashboard") if listed(record) else None
        if not link:
            return None
        parts = urlsplit(link)
        host = f"[{parts.hostname}]" if ":" in (parts.hostname or "") else parts.hostname
        try:
            response = await AsyncHTTPClient().fetch(
                f"http://{host}:{parts.port or 80}/individual-plots.json", connect_timeout=3, request_timeout=5)
            found = json.loads(response.body)
        except Exception:  # noqa: BLE001 - unreachable, refused, not JSON: no dashboard to show
            return None
        if not isinstance(found, dict):
            return None
        return {name: path for name, path in found.items() if isinstance(name, str) and len(name) <= 100
                and isinstance(path, str) and len(path) <= 200 and _PLOT_PATH.fullmatch(path)}

    def was_listed(self, key: str) -> bool:
        return key in self._gone

    def forget(self, cluster_id: str) -> None:
        """Remember the keys of a cluster leaving the list (the latest thousand)."""
        for key in self._keys(cluster_id):
            self._gone[key] = cluster_id
        while len(self._gone) > 1000:
            del self._gone[next(iter(self._gone))]

    def _keys(self, cluster_id: str) -> list[str]:
        return [k for k, c in self._dask._clusters.items() if getattr(c, "cluster_id", None) == cluster_id]

    def update(self, record: dict[str, Any]) -> None:
        """List the cluster (or stop listing it) as its record says; its workers' threads and
        memory follow once the scheduler has told them."""
        manager, cluster_id = self._dask, record["id"]
        keys = self._keys(cluster_id)
        if not listed(record):
            if record["target"] == "stopped" or record["status"] in ("stopped", "error"):
                self._claimed.discard(cluster_id)
            self.forget(cluster_id)
            for key in keys:
                if not getattr(manager._clusters[key], "closing", False):  # SHUTDOWN's own pop follows
                    manager._clusters.pop(key)
                    manager._cluster_names.pop(key, None)
                    manager._adaptives.pop(key, None)
            return
        if not keys and cluster_id not in self._claimed:
            key = dask_key(cluster_id)
            manager._clusters[key] = ClusterView(self, cluster_id)
            keys = [key]
        for key in keys:
            manager._cluster_names[key] = record["name"]
            view = manager._clusters[key]
            if isinstance(view, ClusterView):
                view.scheduler_address = record.get("scheduler_address") or ""
        if keys:
            self._refresh(cluster_id)

    def _refresh(self, cluster_id: str) -> None:
        """Read the scheduler's identity in the background, one read per cluster at a time."""
        task = self._refreshing.get(cluster_id)
        if task is not None and not task.done():
            self._stale.add(cluster_id)
            return
        self._refreshing[cluster_id] = asyncio.ensure_future(self._read_identity(cluster_id))

    async def _read_identity(self, cluster_id: str) -> None:
        from distributed.core import rpc

        from coiled_lab.tls import TLSMaterial

        try:
            while True:
                self._stale.discard(cluster_id)
                manager = await self.service.manager()
                conn = await manager.connection(cluster_id)
                args = TLSMaterial(conn["tls"]["cert"], conn["tls"]["key"]).security().get_connection_args("client")
                async with rpc(conn["address"], timeout=5, connection_args=args) as scheduler:
                    identity = await asyncio.wait_for(scheduler.identity(), 10)
                info = {"workers": {
                    address: {"nthreads": w.get("nthreads", 0), "memory_limit": w.get("memory_limit") or 0}
                    for address, w in identity.get("workers", {}).items()
                }}
                for key in self._keys(cluster_id):
                    view = self._dask._clusters[key]
                    if isinstance(view, ClusterView):
                        view.scheduler_info = info
                if cluster_id not in self._stale:
                    return
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 - the list keeps the last counts; the next event reads again
            logger.debug("coiled-lab: the scheduler of %s did not tell its workers: %s", cluster_id, exc)
        finally:
            self._refreshing.pop(cluster_id, None)

    async def _follow(self) -> None:
        """Every live cluster now, then each change the manager announces."""
        try:
            manager = await self.service.manager()
        except Unavailable:
            return  # Service.start logs why; the API answers it
        subscription = manager.subscribe(kinds={"state", "progress"})
        try:
            for record in await manager.list(live_only=True):
                self.update(record)
            async for event in subscription:
                with suppress(NotFound):
                    self.update(await manager.get(event.cluster_id))
        except asyncio.CancelledError:
            raise
        except Exception:  # noqa: BLE001 - logged; coiled-lab works on without the partner
            logger.exception("coiled-lab: dask-labextension's cluster list is no longer kept in step")
        finally:
            subscription.close()

    # -- "+NEW" ---------------------------------------------------------------------------
    async def new(self, fields: dict[str, Any]) -> ClusterView:
        manager = await self.service.manager()
        record = await manager.create(fields)
        cluster_id = record["id"]
        self._claimed.add(cluster_id)  # dask-labextension lists what the factory returns
        try:
            record = await manager.wait(cluster_id, ("running",))
            if record["status"] != "running":
                raise ClusterError(f"cluster {record['name']} is {record['status']}: {record.get('message')}")
        except BaseException:
            self._claimed.discard(cluster_id)
            raise
        view = ClusterView(self, cluster_id)
        view.scheduler_address = record.get("scheduler_address") or ""
        # Named and counted once dask-labextension has put the view in its list (right after
        # this returns, in this same step of the loop).
        asyncio.get_running_loop().call_soon(self.update, record)
        return view


async def new_cluster(asynchronous: bool = True, **fields: Any) -> ClusterView:
    """dask-labextension's factory with ``coiled-lab.dask-labextension-factory``: a
    coiled-lab cluster with the ``coiled-lab.cluster`` defaults (and ``labextension.factory``'s
    kwargs as ClusterSpec fields), returned once it runs."""
    if _partner is None:
        raise Unavailable("coiled-lab's server extension is not running in this Jupyter server; "
                          "see the server's log for why")
    if dask.config.get("labextension.default.adapt", None):
        raise ClusterError("labextension.default.adapt: coiled-lab clusters start with a number of workers; "
                           "set labextension.default.workers instead")
    return await _partner.new(fields)
