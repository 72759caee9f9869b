"""ClusterManager: create/scale/stop clusters by editing what *should be*, then reconciling.

A verb only writes the cluster's target or spec to the store and asks for a pass of the
reconciler (:mod:`.reconciler`, this class's other half), which alone moves the cluster
through the state machine. On start the manager takes the store (:mod:`.leadership`:
one manager per state dir, others follow read-only), reloads it and reconciles every live
cluster, which adopts what still runs and cleans up what was half made. The scheduler
calls live in :mod:`.schedulers`, the records' JSON in :mod:`.views`.

Every verb acts for a :class:`~.callers.Caller` (this process's own user, an admin, unless
told otherwise): a cluster belongs to whoever created it; a caller who is not an admin
sees and changes only its own, and a cluster it may not see is answered exactly as one
that does not exist. Each change (and each request the limits refuse) is written to the
store's audit log with who asked, in the change's own transaction.
"""

from __future__ import annotations

import asyncio
import logging
import re
import secrets
import time
from contextlib import suppress
from pathlib import Path
from typing import Any, Callable, Optional

from dask.utils import parse_timedelta

from .. import config
from ..backends import Backend, ClusterContext, get_backend, ingress
from ..errors import Conflict, Forbidden, LimitExceeded, ManagerBusy, NotFound, SchedulerUnreachable, quoted
from ..logs import matches
from ..pricing import PriceBook
from ..spec import ClusterSpec, ClusterSpecError, check_place, cluster_python, parse_spec, revise, running_python
from ..tls import TLSMaterial
from . import leadership, limits, notifications, storefile
from .callers import ADAPTIVE, LOCAL, Caller
from .environments import SERVER, Environments
from .events import Event, EventBus, Subscription
from .reconciler import Reconciler
from .schedulers import SchedulerLinks
from .states import FINAL, State, Target
from .store import ClusterRecord, NameInUse, open_store
from .usage import FIRST_WAIT, UsageMirror
from .views import ListCache, cluster_json

logger = logging.getLogger("coiled_lab.manager")


TIMEOUT_FIELDS = ("idle_timeout", "no_client_timeout", "max_lifetime")
LIVE_FIELDS = ("n_workers", "adaptive", *TIMEOUT_FIELDS)  # what PATCH may change on a live cluster
OWNER_GROUPS = "owner_groups"  # the owner's groups when it created the cluster (its state): its limits then


class ClusterManager(Reconciler):
    def __init__(
        self,
        state_dir: Optional[Path] = None,
        backends: Optional[dict[str, Backend]] = None,
        check_interval: Optional[float] = None,
        sessions: Optional[Callable[[str], Any]] = None,
        db: Optional[str] = None,
    ):
        """``sessions(backend_name)`` gives the credentials session a cloud backend is made
        with (the Jupyter server's stored credentials); without it, the SDKs' chains.
        ``db`` is the store (:func:`.store.open_store`: a ``postgresql://`` URL, or a SQLite
        path); without it, ``store.db``, else ``coiled-lab.sqlite`` in the state dir."""
        self.state_dir = Path(state_dir) if state_dir else config.state_dir()
        self.state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.store = open_store(db or config.get("store.db") or self.state_dir / "coiled-lab.sqlite")
        self.environments = Environments(self.state_dir)
        self.prices = PriceBook(self.store)  # backends that have a price API give it their session
        self.bus = EventBus()
        self.admission = limits.Admission(lambda: self.store.list_clusters(live_only=True), self._spent)
        self._owners: dict[str, str] = {}  # cluster id -> owner (never changes), for the events' filter
        self._backends: dict[str, Backend] = dict(backends or {})
        self._sessions = sessions
        self.check_interval = float(check_interval or config.get("manager.check-interval"))
        self.max_retries = int(config.get("manager.max-retries"))
        self.retry_backoff = float(config.get("manager.retry-backoff"))
        self.retry_backoff_max = float(config.get("manager.retry-backoff-max"))
        self.cost_interval = float(config.get("manager.cost-interval"))
        self._pending: set[str] = set()
        self._tasks: dict[str, asyncio.Task] = {}
        self._later: dict[str, asyncio.TimerHandle] = {}
        self._reach_checked: dict[str, float] = {}  # cluster id -> when its scheduler's log was last read
        self._usage: dict[str, UsageMirror] = {}  # running clusters' watchdog samples
        self._tls_material: dict[str, TLSMaterial] = {}
        self.schedulers = SchedulerLinks(lambda cluster_id: self._tls(self.store.get_cluster(cluster_id)))
        self._usage_at: dict[str, float] = {}  # when the GPU-idle check last looked
        self._list_cache = ListCache()
        self._watch_task: Optional[asyncio.Task] = None
        self._backup_task: Optional[asyncio.Task] = None
        self.backup_interval = float(parse_timedelta(config.get("store.backup-interval")))
        self._lock = leadership.lock_for(self.store, self.state_dir)
        self._busy: Optional[ManagerBusy] = None
        self.started = False
        self.owner = False  # holds the store's lock, so it may change and reconcile clusters
        self.on_owner: Optional[Callable[[], None]] = None  # called when this manager takes the store

    # == lifecycle ========================================================================
    async def start(self, readonly_ok: bool = False) -> "ClusterManager":
        """Take the store, then adopt or clean up every live cluster it records.

        When another process already manages the store, raise ManagerBusy, or with
        ``readonly_ok`` start read-only: listing, status, logs, waiting and events work
        (the managing process's events are read from the store), changes are refused with
        that ManagerBusy (go through the managing process instead). A read-only manager
        takes the store over by itself once the managing process is gone, however it
        ended (the lock is the kernel's, released with the process).

        A store that is damaged, missing though it existed, or not writable raises
        StoreUnavailable naming it and the fix; starting again tries again.
        """
        if self.started:
            return self
        self.store.open()
        try:
            self._lock.take()
        except ManagerBusy as exc:
            if not readonly_ok:
                raise
            self._busy = exc
            self.started = True
            self._watch_task = asyncio.create_task(self._follow())
            return self
        self.started = True
        self._own()
        return self

    def _own(self) -> None:
        """Manage the store (its lock is held): reconcile every live cluster, watch them."""
        self.owner = True
        self._busy = None
        for rec in self.store.list_clusters(live_only=True):
            self.request(rec.id)
        self._watch_task = asyncio.create_task(self._watch())
        self._backup_task = asyncio.create_task(leadership.keep_backup(self.store, self.backup_interval))
        if self.on_owner is not None:
            self.on_owner()

    async def _follow(self) -> None:
        """Read-only: pass on the events the managing process stores, and take over as
        soon as its lock is free."""
        last = self.store.last_event()
        while True:
            await asyncio.sleep(self.check_interval)
            while page := self.store.events(after=last):
                for e in page:
                    self._publish(Event(e["cluster_id"], e["kind"], e["data"], e["time"], e["seq"]))
                    last = e["seq"]
            try:
                self._lock.take()
            except ManagerBusy:
                continue
            logger.info("took over %s: the manager that held it is gone", self.state_dir)
            self._own()
            return

    async def close(self) -> None:
        """Stop managing; the clusters themselves keep running (and keep their timeouts)."""
        if not self.started:
            return
        owner, self.started, self.owner = self.owner, False, False
        for task in (self._watch_task, self._backup_task):
            if task:
                task.cancel()
        for handle in self._later.values():
            handle.cancel()
        tasks = list(self._tasks.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await self.schedulers.close()
        self.bus.close()
        if owner:  # a clean shutdown: the backup is the store as it is left
            await leadership.back_up(self.store)
        self.store.close()
        self._lock.release()

    async def __aenter__(self) -> "ClusterManager":
        return await self.start()

    async def __aexit__(self, *exc) -> None:
        await self.close()

    # == the store =======================================================================
    def restore_store(self, empty: bool = False) -> str:
        """Put the backup (or, with ``empty``, nothing) in place of a damaged store, while no
        manager uses it: what ``coiled-lab store restore`` runs. A whole store is refused
        (StoreUnavailable: nothing to restore). A server that found its store damaged at
        start does not hold it, and takes the restored one with its next request; one whose
        store was damaged under it does (ManagerBusy: stop it first). Returns what was
        done, in one line."""
        if self.started:
            raise Conflict("this manager is running; restore its store from the command line instead")
        self.store.check_restorable()  # a whole store in use says so, not that it is in use
        self._lock.take()
        try:
            self.store.close()
            return storefile.restore(self.store.path, empty)
        finally:
            self._lock.release()

    def backend(self, name: str) -> Backend:
        if name not in self._backends:
            session = self._sessions(name) if self._sessions and name != "local" else None
            self._backends[name] = get_backend(name, session)
        backend = self._backends[name]
        if getattr(backend, "prices", None) is None:
            backend.prices = self.prices  # one price cache, the store's, for choices, estimates and costs
        return backend

    def credentials_changed(self, name: str) -> None:
        """New credentials for a cloud: its backend is made again with them on next use, and
        its price API is asked with them too."""
        self._backends.pop(name, None)
        if name in ("aws", "gcp"):
            setattr(self.prices, name, None)

    # == verbs ============================================================================
    async def create(self, spec: ClusterSpec | dict[str, Any], environment: Any = None, *,
                     caller: Caller = LOCAL) -> dict[str, Any]:
        """Record a new cluster of ``caller``'s and start provisioning it in the background;
        returns at once. ``environment`` is what package sync installs: an environment as
        :func:`coiled_lab.environment.snapshot` takes it (``to_json()``), or the hash of one
        sent before; None: this server's own, and a notification says so. An ``owner`` in
        the request is refused: a cluster is always its creator's."""
        if isinstance(spec, dict) and "owner" in spec:
            raise ClusterSpecError(f"owner: is not allowed; a cluster belongs to whoever creates it "
                                   f"({quoted(caller.name)})", "owner")
        if not isinstance(spec, ClusterSpec):
            spec = parse_spec(spec)
        self._check_owner()
        backend = self._checked_backend(spec)  # before the limits: an estimate they ask for may call the cloud
        env = await asyncio.to_thread(self.environments.resolve, spec, environment)
        estimate, estimated = self._estimator()
        # The slot is held from the count to the record: creates running concurrently (each
        # awaits the cloud below) can never together go over max-clusters or the total $/hour.
        try:
            with self.admission.hold(caller=caller) as weigh:
                per_hour = await limits.check(spec, estimate, caller, always_estimate=caller != LOCAL)
                weigh(per_hour)  # right after the estimate: no await in between
                await backend.check_access(spec.region)
                if spec.backend != "local":  # 'me' that cannot be learned: refused now, not after the launch
                    await asyncio.to_thread(ingress.precheck, spec.connect_via, spec.allow_ingress_from,
                                            spec.backend,
                                            lambda message: ClusterSpecError(message, "allow_ingress_from"))
                # No await from here to the insert: the record takes the slot's place in the count.
                rec, data, seq = self._record(spec, env, per_hour, caller)
        except LimitExceeded as exc:
            self._refused(caller.name, "create", None, spec.name, exc, estimated)
            raise
        self._publish(Event(rec.id, "state", data, data["time"], seq))
        if env is not None:
            self._tell_software(rec.id, env)
            self.environments.prune({r.state.get("environment") for r in self.store.list_clusters(live_only=True)})
        self.request(rec.id)
        return cluster_json(rec)

    def _record(self, spec: ClusterSpec, env: Any, per_hour: Optional[float],
                caller: Caller) -> tuple[ClusterRecord, dict, int]:
        """Insert a new cluster's record (with its first event and its audit row);
        synchronous, so that :meth:`create` counts and records with no await in between."""
        cluster_id = secrets.token_hex(6)
        name = spec.name or _default_name(caller.name, cluster_id)
        # The Python the cluster runs is fixed now (the asking environment's when left out),
        # so that every machine launched later for it, after a restart too, gets the same.
        # Local processes run this server's (a configured default for clouds does not apply).
        if env is not None and env.where != SERVER and not spec.python_version:
            spec = spec.model_copy(update={"python_version": env.python})
        python = running_python() if spec.backend == "local" else cluster_python(spec)
        spec = spec.model_copy(update={"name": name, "python_version": python,
                                       "environ": {**(env.environ if env else {}), **spec.environ}})
        now = time.time()
        state: dict[str, Any] = {"environment": env.hash} if env else {}
        if per_hour is not None:
            state[limits.ADMITTED_PER_HOUR] = per_hour
        if caller.groups:
            state[OWNER_GROUPS] = sorted(caller.groups)
        rec = ClusterRecord(
            id=cluster_id, name=name, backend=spec.backend, spec=spec.public(), status=State.pending,
            target=Target.running, message=None, state=state, created_at=now, updated_at=now, owner=caller.name,
        )
        data = {"status": str(State.pending), "message": None, "name": name, "time": now}
        audit = (caller.name, "create", per_hour, {"backend": spec.backend, "n_workers": spec.n_workers,
                                                   "adaptive": spec.adaptive, "region": spec.region})
        try:
            seq = self.store.insert_cluster(rec, event=("state", data), audit=audit)
        except NameInUse as exc:
            raise ClusterSpecError(f"name: {name!r} is not allowed: {exc}", "name") from None
        self._owners[rec.id] = rec.owner
        return rec, data, seq

    def _tell_software(self, cluster_id: str, env: Any) -> None:
        """Before launch, when the software is not all the asker's: what of it the VMs will not
        have, or that the server's own is synced (the backend says where it comes from and
        whether it is built when it launches the scheduler)."""
        lines = env.unsynced()
        if not lines and env.where != SERVER:
            return
        message = env.line() + (f"; not installed on the VMs: {'; '.join(lines)}" if lines else "")
        if len(message) > 2000:
            message = message[:1999] + "…"
        self.notify(cluster_id, notifications.Notice("software", "software", "warning", message))

    def stage_environment(self, data: Any) -> dict[str, Any]:
        """Keep an environment a kernel or the CLI sent ahead of a create; its summary."""
        return self.environments.stage(data).summary()

    async def environment_built(self, env_hash: str, backend: str, region: Optional[str] = None) -> dict[str, Any]:
        """Whether ``backend``'s bucket holds the environment ``env_hash`` built (None: there
        is no bucket there)."""
        return {"hash": env_hash, "backend": backend, "built": await self.backend(backend).environment_built(
            env_hash, region)}

    async def scale(self, name_or_id: str, n_workers: int, *, caller: Caller = LOCAL) -> dict[str, Any]:
        """Change the number of workers; the reconciler launches or retires the difference."""
        return await self._resize(self._find(name_or_id, caller), {"n_workers": n_workers}, caller)

    async def scale_adaptively(self, cluster_id: str, n_workers: int) -> dict[str, Any]:
        """:meth:`scale` as the server's adaptive policy does it, on the owner's behalf:
        judged by the owner's limits, audited as :data:`ADAPTIVE`; a refusal is not audited
        (the policy asks again every interval; the owner is notified once instead)."""
        rec = self._find(cluster_id)
        return await self._resize(rec, {"n_workers": n_workers}, self._owner_caller(rec), actor=ADAPTIVE)

    async def _resize(self, rec: ClusterRecord, changes: dict[str, Any], caller: Caller,
                      actor: Optional[str] = None) -> dict[str, Any]:
        """Write a new size (``n_workers``, and the adaptive bounds with it) once the backend's
        rules and the admin's limits took it; the reconciler does the rest. The limits are
        the owner's (an admin who scales another's cluster changes what that owner spends);
        the audit log names ``actor`` (default: the caller)."""
        actor = actor or caller.name
        rec = self._scalable(rec)
        spec = revise(rec.spec, changes)
        self._checked_backend(spec)  # the backend's rules on the new size (the local ceiling)
        owner = self._owner_caller(rec, caller)
        estimate, estimated = self._estimator()
        try:
            with self.admission.hold(replacing=rec, caller=owner) as weigh:
                per_hour = await limits.check(spec, estimate, owner, always_estimate=caller != LOCAL)
                rec = self._scalable(self.store.get_cluster(rec.id))  # as it is now, after the await
                weigh(per_hour)
                if spec.n_workers == rec.spec["n_workers"] and spec.adaptive == rec.spec.get("adaptive"):
                    return cluster_json(rec)
                fields: dict[str, Any] = {"spec": spec.public()}
                if per_hour is not None:
                    fields["state"] = {**rec.state, limits.ADMITTED_PER_HOUR: per_hour}
                audit = (actor, "scale", _per_hour(rec) if per_hour is None else per_hour,
                         {"from": rec.spec["n_workers"], "to": spec.n_workers, "adaptive": spec.adaptive})
                self._acknowledge(self._update(rec, audit=audit, **fields))
        except LimitExceeded as exc:
            if actor != ADAPTIVE:
                self._refused(actor, "scale", rec.id, rec.name, exc, estimated)
            raise
        self.request(rec.id)
        return cluster_json(self.store.get_cluster(rec.id))

    def _scalable(self, rec: ClusterRecord) -> ClusterRecord:
        """``rec``, if this manager may scale it now (asked again after each await)."""
        self._check_owner()
        if not rec.live or rec.target == Target.stopped:
            raise Conflict(f"cluster {rec.name!r} is {rec.status}; only a live cluster can be scaled")
        return rec

    async def update(self, name_or_id: str, changes: dict[str, Any], *, caller: Caller = LOCAL) -> dict[str, Any]:
        """PATCH: ``n_workers`` scales (``[min, max]`` sets adaptive bounds, as ``adaptive``
        does; None turns adapting off); the timeouts change on the running scheduler too."""
        if not isinstance(changes, dict) or not changes:
            raise ClusterSpecError(f"expected a JSON object with some of: {', '.join(LIVE_FIELDS)}", None)
        unknown = sorted(set(changes) - set(LIVE_FIELDS))
        if unknown:
            raise ClusterSpecError(
                f"{unknown[0]}: cannot be changed on a live cluster; allowed: {', '.join(LIVE_FIELDS)}", unknown[0]
            )
        rec = self._find(name_or_id, caller)
        self._check_owner()
        if not rec.live or rec.target == Target.stopped:
            raise Conflict(f"cluster {rec.name!r} is {rec.status}; only a live cluster can be changed")
        if changes.get("adaptive") and "n_workers" not in changes:  # the size moves into the new bounds
            low, high = (changes["adaptive"] + [0, 0])[:2] if isinstance(changes["adaptive"], list) else (0, 0)
            if isinstance(low, int) and isinstance(high, int):
                changes = {**changes, "n_workers": max(low, min(high, rec.spec["n_workers"]))}
        spec = revise(rec.spec, changes)  # validates every change before any of them applies
        timeouts = {k: getattr(spec, k) for k in TIMEOUT_FIELDS}
        if any(timeouts[k] != rec.spec[k] for k in TIMEOUT_FIELDS):
            # The scheduler enforces the timeouts: it hears of them first, and the store
            # records them only once it has (an answer of failure leaves both unchanged).
            if rec.state.get("address"):
                try:
                    await self.schedulers.set_timeouts(rec.id, rec.state["address"], timeouts)
                except (OSError, asyncio.TimeoutError) as exc:
                    raise SchedulerUnreachable(
                        f"the scheduler of {rec.name!r} did not answer ({exc or 'no answer'}); its timeouts are "
                        "unchanged: try again in a moment") from None
            changed = {k: v for k, v in timeouts.items() if v != rec.spec[k]}
            rec = self._update(self.store.get_cluster(rec.id) or rec, spec={**rec.spec, **timeouts},
                               audit=(caller.name, "update", _per_hour(rec), changed))
            self.request(rec.id)
        if "n_workers" in changes or "adaptive" in changes:
            return await self._resize(self.store.get_cluster(rec.id),
                                      {"n_workers": spec.n_workers, "adaptive": spec.adaptive}, caller)
        return cluster_json(self.store.get_cluster(rec.id))

    async def stop(self, name_or_id: str, *, caller: Caller = LOCAL) -> dict[str, Any]:
        """Ask for the cluster to stop; returns at once (watch events or :meth:`wait`)."""
        return await self._stop(self._find(name_or_id, caller), caller.name)

    async def _stop(self, rec: ClusterRecord, actor: str) -> dict[str, Any]:
        """Stop ``rec``, audited as ``actor``'s doing (a user, or the server's budget check)."""
        if rec.status == State.stopped:
            return cluster_json(rec)
        self._check_owner()
        if rec.target != Target.stopped:
            self._acknowledge(self._update(rec, target=Target.stopped, audit=(actor, "stop", _per_hour(rec), None)))
        self.request(rec.id)
        return cluster_json(self.store.get_cluster(rec.id))

    async def get(self, name_or_id: str, *, caller: Caller = LOCAL) -> dict[str, Any]:
        return cluster_json(self._find(name_or_id, caller))

    async def list(self, live_only: bool = False, *, caller: Caller = LOCAL) -> list[dict[str, Any]]:
        """The clusters ``caller`` may see (an admin: everyone's), oldest first."""
        return [cluster_json(r) for r in self.store.list_clusters(live_only=live_only, owner=_whose(caller))]

    async def list_json(self, live_only: bool = False, *, caller: Caller = LOCAL) -> str:
        """:meth:`list` already encoded as a JSON array, for the REST API. A stopped
        cluster's JSON never changes, so it is encoded once and reused until its row does."""
        return self._list_cache.encode(self.store.versions(live_only, owner=_whose(caller)), self.store.get_clusters)

    async def logs(
        self,
        name_or_id: str,
        since: Optional[float] = None,
        instance: Optional[str] = None,
        q: Optional[str] = None,
        level: Optional[str] = None,
        limit: Optional[int] = 1000,
        *,
        caller: Caller = LOCAL,
    ) -> list[dict[str, Any]]:
        """The cluster's log records after ``since``, filtered; the newest ``limit`` (None: all)."""
        rec = self._find(name_or_id, caller)
        records = await self.backend(rec.backend).logs(self._context(rec), since=since)
        records = [r for r in records if matches(r, instance, q, level)]
        return [r.to_json() for r in (records[-limit:] if limit else records)]

    async def connection(self, name_or_id: str, *, caller: Caller = LOCAL) -> dict[str, Any]:
        """What a client needs to connect: scheduler address and the cluster's TLS material."""
        rec = self._find(name_or_id, caller)
        address = rec.state.get("address")
        if not rec.live or not address:
            raise Conflict(f"cluster {rec.name!r} is {rec.status}; it has no scheduler to connect to yet")
        tls = self._tls(rec)
        return {
            "id": rec.id,
            "name": rec.name,
            "address": address,
            "dashboard": rec.state.get("dashboard"),
            "tls": {"cert": tls.cert_pem, "key": tls.key_pem},
        }

    async def wait(
        self, name_or_id: str, states: tuple[str, ...] = ("running",), timeout: Optional[float] = None, *,
        caller: Caller = LOCAL,
    ) -> dict[str, Any]:
        """Wait until the cluster reaches one of ``states`` (or a final state); return it."""
        rec = self._find(name_or_id, caller)
        wanted = {State(s) for s in states} | FINAL
        sub = self.bus.subscribe(rec.id, kinds={"state"})
        try:
            async def _until():
                current = self.store.get_cluster(rec.id)
                while current.status not in wanted:
                    # Events wake us at once; re-reading the store now and then also sees
                    # changes made by the process that manages it when we are read-only.
                    with suppress(asyncio.TimeoutError):
                        await asyncio.wait_for(sub.get(), self.check_interval)
                    current = self.store.get_cluster(rec.id)
                return current

            return cluster_json(await asyncio.wait_for(_until(), timeout))
        finally:
            sub.close()

    async def notifications(self, name_or_id: str, *, caller: Caller = LOCAL) -> list[dict[str, Any]]:
        """Everything the cluster's user was told, oldest first (kept after it stops)."""
        rec = self._find(name_or_id, caller)
        return [{"time": e["time"], **e["data"]} for e in self.store.events(rec.id, limit=100_000)
                if e["kind"] == "notification"]

    async def usage(self, name_or_id: str, since: Optional[float] = None,
                    wait: Optional[float] = FIRST_WAIT, *, caller: Caller = LOCAL) -> dict[str, Any]:
        """The watchdog's recent samples (workers, clients, tasks, CPU, memory, GPU), and
        when the scheduler was last read (``as_of``; None while its first read, waited for
        up to ``wait`` seconds, has not answered)."""
        return await self._usage_of(self._find(name_or_id, caller)).get(since, wait)

    def subscribe(self, cluster_id: Optional[str] = None, kinds: Optional[set[str]] = None, *,
                  caller: Caller = LOCAL) -> Subscription:
        """Events as they happen: of one cluster (look it up with ``caller`` first), or of
        every cluster ``caller`` may see."""
        return self.bus.subscribe(cluster_id, kinds, visible=None if caller.admin else self._visible(caller))

    def events_since(self, after: int, cluster_id: Optional[str] = None, *,
                     caller: Caller = LOCAL) -> list[dict[str, Any]]:
        """The stored events after ``after`` of the clusters ``caller`` may see (one page:
        ask again after the last one's ``seq``; an empty page is the end)."""
        if caller.admin:
            return self.store.events(cluster_id, after=after)
        sees = self._visible(caller)
        while page := self.store.events(cluster_id, after=after):
            mine = [e for e in page if sees(e["cluster_id"])]
            if mine:
                return mine
            after = page[-1]["seq"]  # a page of other users' events only: read on
        return []

    async def catalog(self, backend: Optional[str] = None, region: Optional[str] = None) -> dict[str, Any]:
        """Regions, zones and instance types a backend offers (for forms and validation)."""
        name = backend or config.get("cluster.backend")
        check_place("region", region)
        if name not in ("local", "aws", "gcp"):
            raise ClusterSpecError(f"backend: {quoted(name)} is not allowed; allowed: 'local', 'aws', 'gcp'", "backend")
        try:
            chosen = self.backend(name)
        except ValueError as exc:
            raise ClusterSpecError(str(exc), "backend") from None
        return await chosen.catalog(region)

    async def reach(self, backend: Optional[str] = None) -> dict[str, Any]:
        """Who ``me`` (allow_ingress_from) is from this server, for a cloud backend's form."""
        name = backend or config.get("cluster.backend")
        if name not in ("aws", "gcp"):
            raise ClusterSpecError(f"backend: {quoted(name)} is not allowed; allowed: 'aws', 'gcp'", "backend")
        return await asyncio.to_thread(ingress.describe_me, name)

    async def estimate(self, spec: ClusterSpec | dict[str, Any], *, caller: Caller = LOCAL) -> dict[str, Any]:
        """What a spec would cost per hour, before anything is launched, and whether
        ``caller``'s limits on one request would refuse it (``refused``: the refusal's JSON;
        None). The limits on all live clusters together are judged at create."""
        spec = spec if isinstance(spec, ClusterSpec) else parse_spec(spec)
        answer = await self._estimate(spec)

        async def known(_: ClusterSpec) -> dict[str, Any]:
            return answer

        try:
            await limits.check(spec, known, caller)
            answer["refused"] = None
        except LimitExceeded as exc:
            answer["refused"] = exc.to_json()
        return answer

    async def audit(self, caller: Caller = LOCAL, after: int = 0, limit: int = 1000, user: Optional[str] = None,
                    cluster: Optional[str] = None, newest: bool = False) -> list[dict[str, Any]]:
        """The audit log, oldest first, after ``after`` (a row's ``seq``: page on with the
        last one's; ``newest``: the latest ``limit`` rows instead of the first): every create,
        scale, update and stop, who asked (``actor``), the estimated $/hour then, and the
        requests the limits refused. ``user``: one actor's rows; ``cluster``: one cluster's
        (name or id). Admins only (Forbidden)."""
        if not caller.admin:
            raise Forbidden(f"the audit log is for admins only, and {quoted(caller.name)} is not one")
        cluster_id = self._find(cluster, caller).id if cluster else None
        return self.store.audit(after=after, limit=limit, actor=user, cluster_id=cluster_id, newest=newest)

    async def cleanup(self, dry_run: bool = False, *, caller: Caller = LOCAL) -> dict[str, Any]:
        """Find processes/resources of clusters the store does not consider live; remove them.

        One backend at a time, each on its own: a cloud that cannot be reached (or has no
        credentials) is reported in ``errors`` and the other backends are still cleaned.
        Returns ``{"found": [{id, name, instances}], "errors": [{backend, error}]}``. It
        looks at every user's clusters: admins only (Forbidden)."""
        if not caller.admin:
            raise Forbidden(f"cleanup looks at every user's clusters: it is for admins only, and "
                            f"{quoted(caller.name)} is not one")
        if not dry_run:
            self._check_owner()
        stale: dict[str, list[ClusterRecord]] = {}
        for rec in self.store.list_clusters():
            if not rec.live:
                stale.setdefault(rec.backend, []).append(rec)
        found: list[dict[str, Any]] = []
        errors: list[dict[str, str]] = []
        for name, records in stale.items():
            try:
                found += await self._cleanup_backend(name, records, dry_run)
            except Exception as exc:  # noqa: BLE001 - one backend's failure is its own entry
                logger.warning("cleanup of %s failed: %s", name, exc)
                errors.append({"backend": name, "error": f"{name} was not cleaned up ({type(exc).__name__}: {exc}); "
                                                         "run cleanup again once its cloud answers"})
        return {"found": found, "errors": errors}

    async def _cleanup_backend(self, name: str, records: list[ClusterRecord], dry_run: bool) -> list[dict[str, Any]]:
        found = []
        backend = self.backend(name)
        for rec in records:
            ctx = self._context(rec, load_tls=False)
            running = await backend.describe(ctx)
            if running:
                found.append({"id": rec.id, "name": rec.name, "backend": name, "instances": [i.id for i in running]})
                if not dry_run:
                    await backend.stop_instances(ctx, running)
        return found

    # == helpers ==========================================================================
    @property
    def busy(self) -> Optional[ManagerBusy]:
        """Why this manager is read-only (another process manages the store), else None."""
        return self._busy

    def _check_owner(self) -> None:
        if self._busy is not None:
            raise self._busy
        if not self.owner:
            raise RuntimeError("the manager is not started; use `async with ClusterManager() as m`")

    def _find(self, name_or_id: str, caller: Caller = LOCAL) -> ClusterRecord:
        """The cluster named so, or with that id, if ``caller`` may see it; else NotFound,
        alike for a cluster that does not exist and one that is another user's."""
        key = str(name_or_id)
        rec = self.store.find_cluster(key)
        if rec is not None and rec.id != key and rec.owner != caller.name:
            # Names are unique per owner: the caller's own cluster of that name comes first (live,
            # else the newest); another user's only for an admin who has none.
            named = [r for r in self.store.list_clusters(owner=caller.name) if r.name == key]
            own = max(named, key=lambda r: (r.live, r.created_at), default=None)
            rec = own if own is not None or not caller.sees(rec.owner) else rec
        if rec is None or not caller.sees(rec.owner):
            raise NotFound(name_or_id)
        self._owners[rec.id] = rec.owner
        return rec

    def _visible(self, caller: Caller) -> Callable[[str], bool]:
        """Whether ``caller`` may see the cluster with an id: for the events' filter, asked
        for every event published, so from memory once known (owners never change)."""
        def sees(cluster_id: str) -> bool:
            owner = self._owners.get(cluster_id)
            if owner is None:
                rec = self.store.get_cluster(cluster_id)
                if rec is None:
                    return False
                owner = self._owners[cluster_id] = rec.owner
            return caller.sees(owner)

        return sees

    def _owner_caller(self, rec: ClusterRecord, caller: Optional[Caller] = None) -> Caller:
        """Whose limits judge a change of ``rec``: its owner's, with the groups it had when it
        created the cluster (``caller`` itself when it is the owner: its groups now)."""
        if caller is not None and caller.name == rec.owner:
            return caller
        return Caller(rec.owner, admin=False, groups=frozenset(rec.state.get(OWNER_GROUPS, ())))

    def _spent(self, owner: str) -> float:
        """What ``owner``'s clusters cost this calendar month so far (for monthly budgets)."""
        return limits.spent_this_month(self.store.list_clusters(owner=owner))

    def _estimator(self) -> tuple[Callable[[ClusterSpec], Any], list[float]]:
        """The estimate the limits ask for, and the list it notes each $/hour in: a refused
        request's audit row says what it would have cost."""
        estimated: list[float] = []

        async def estimate(spec: ClusterSpec) -> dict[str, Any]:
            answer = await self._estimate(spec)
            estimated.append(float(answer["per_hour"]))
            return answer

        return estimate, estimated

    def _refused(self, actor: str, action: str, cluster_id: Optional[str], name: Optional[str],
                 exc: LimitExceeded, estimated: list[float]) -> None:
        """Write a request the limits refused to the audit log (admins see who hits which limit)."""
        self.store.add_audit(actor, "refused", cluster_id, name, estimated[-1] if estimated else None,
                             {"action": action, "limit": exc.limit, "field": exc.field, "error": exc.message})

    def cluster_dir(self, cluster_id: str) -> Path:
        path = self.state_dir / "clusters" / cluster_id
        path.mkdir(parents=True, exist_ok=True, mode=0o700)
        return path

    def _tls(self, rec: ClusterRecord) -> TLSMaterial:
        """The cluster's TLS material: made once, kept in its directory, read once per
        process (every reconcile step needs it)."""
        tls = self._tls_material.get(rec.id)
        if tls is None:
            directory = self.cluster_dir(rec.id)
            if (directory / "tls-key.pem").exists():
                tls = TLSMaterial.read(directory)
            else:
                tls = TLSMaterial.generate(rec.id)
                tls.write(directory)
            self._tls_material[rec.id] = tls
        return tls

    def _context(self, rec: ClusterRecord, load_tls: bool = True) -> ClusterContext:
        return ClusterContext(
            id=rec.id,
            name=rec.name,
            spec=revise(rec.spec),
            tls=self._tls(rec) if load_tls else None,  # type: ignore[arg-type]
            directory=self.cluster_dir(rec.id),
            state=dict(rec.state),
            instances=self.store.instances(rec.id),
            environment=self.environments.get(rec.state.get("environment")),
            notify=lambda kind, message, level="warning": self.notify(
                rec.id, notifications.Notice(f"{kind}:{message}", kind, level, message)
            ),
        )

    def _checked_backend(self, spec: ClusterSpec) -> Backend:
        """The spec's backend, once it found nothing wrong with the spec that it can tell
        without its cloud (a region it lacks, an unsupported Python, a requirements file
        a VM cannot install): no record, no cloud call for a refused spec."""
        try:
            backend = self.backend(spec.backend)  # an unavailable backend fails here, before any record
        except ValueError as exc:
            raise ClusterSpecError(str(exc), "backend") from None
        check = getattr(backend, "check_spec", None)  # a stand-in for pricing alone (tests) has none
        if check is not None:
            check(spec)
        return backend

    async def _estimate(self, spec: ClusterSpec) -> dict[str, Any]:
        from ..pricing import estimate

        backend = self._checked_backend(spec)
        return await estimate(spec, None if spec.backend == "local" else backend, self.prices)


def _default_name(user: str, cluster_id: str) -> str:
    """``<user>-<id prefix>``, ``user`` the creator (the service's users in team mode)."""
    user = re.sub(r"[^a-z0-9-]+", "-", user.lower()).strip("-") or "user"
    return f"{user[:40]}-{cluster_id[:6]}"


def _whose(caller: Caller) -> Optional[str]:
    """The owner whose clusters ``caller`` lists: its own, or everyone's (None) for an admin."""
    return None if caller.admin else caller.name


def _per_hour(rec: ClusterRecord) -> Optional[float]:
    """A live cluster's $/hour now, for the audit log: what it was admitted with (its
    estimate at create or last scale), else its cost's current rate; None: unknown."""
    admitted = rec.state.get(limits.ADMITTED_PER_HOUR)
    return admitted if admitted is not None else (rec.state.get("cost") or {}).get("per_hour")
