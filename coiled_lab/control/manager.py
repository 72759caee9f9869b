"""ClusterManager: create/scale/stop clusters by editing what *should be*, then reconciling.

Like ``distributed.deploy.SpecCluster`` and dask-gateway's DB backend: a verb only writes
the spec or the target to the store and asks for a reconcile; the reconciler alone moves
the cluster through the state machine, one idempotent pass at a time:

    target stopped -> stop every instance, clean up, ``stopped``
    target running -> network -> scheduler -> all missing workers at once -> wait for them
                      to connect -> ``running``; too many -> retire the extras gracefully

Passes for one cluster never overlap and requests made while one runs coalesce into a
single next pass. A pass that has not converged asks for another one shortly; a pass
that fails is retried with backoff and, after ``max-retries``, the cluster is stopped and
marked ``error`` with the reason. On start the manager reloads the store and reconciles
every live cluster, which adopts what still runs and cleans up what was half made.
"""

from __future__ import annotations

import asyncio
import fcntl
import getpass
import json
import logging
import os
import re
import secrets
import time
from contextlib import suppress
from pathlib import Path
from typing import Any, Callable, Optional

from dask.utils import parse_timedelta

from .. import config
from ..backends import Backend, ClusterContext, get_backend, ingress
from ..bootstrap.lifetime import CLOCKS, STOP_MARKER, time_left
from ..bootstrap.vm import STARTED
from ..deadline import Deadline
from ..errors import Conflict, ManagerBusy, NotFound, SchedulerUnreachable, StoreUnavailable, quoted
from ..logs import LogRecord, matches
from ..pricing import PriceBook, extrapolate
from ..spec import ClusterSpec, ClusterSpecError, check_place, cluster_python, parse_spec, revise, running_python
from ..tls import TLSMaterial
from . import limits, notifications, storefile
from .environments import SERVER, Environments
from .events import Event, EventBus, Subscription
from .states import FINAL, State, check_transition
from .store import ClusterRecord, Instance, NameInUse, Store
from .usage import FIRST_WAIT, UsageMirror

logger = logging.getLogger("coiled_lab.manager")


TIMEOUT_FIELDS = ("idle_timeout", "no_client_timeout", "max_lifetime")
LIVE_FIELDS = ("n_workers", *TIMEOUT_FIELDS)  # what PATCH may change on a live cluster
BACKUP_RETRY = 300.0  # seconds before a failed backup is tried again
SET_TIMEOUTS_WAIT = 10.0  # seconds a PATCH of a timeout waits for the scheduler to take it
UNREACHABLE_AFTER = 20.0  # seconds a scheduler may say it is up while this server cannot reach it
REACH_CHECK_INTERVAL = 10.0  # seconds between two reads of an unreachable scheduler's log


class ClusterManager:
    def __init__(
        self,
        state_dir: Optional[Path] = None,
        backends: Optional[dict[str, Backend]] = None,
        check_interval: Optional[float] = None,
        sessions: Optional[Callable[[str], Any]] = None,
    ):
        """``sessions(backend_name)`` gives the credentials session a cloud backend is made
        with (the Jupyter server's stored credentials); without it, the SDKs' chains."""
        self.state_dir = Path(state_dir) if state_dir else config.state_dir()
        self.state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.store = Store(self.state_dir / "coiled-lab.sqlite")
        self.environments = Environments(self.state_dir)
        self.prices = PriceBook(self.store)  # backends that have a price API give it their session
        self.bus = EventBus()
        self.admission = limits.Admission(lambda: self.store.list_clusters(live_only=True))
        self._backends: dict[str, Backend] = dict(backends or {})
        self._sessions = sessions
        self.check_interval = float(check_interval or config.get("manager.check-interval"))
        self.max_retries = int(config.get("manager.max-retries"))
        self.cost_interval = float(config.get("manager.cost-interval"))
        self._pending: set[str] = set()
        self._tasks: dict[str, asyncio.Task] = {}
        self._later: dict[str, asyncio.TimerHandle] = {}
        self._failures: dict[str, int] = {}
        self._reach_checked: dict[str, float] = {}  # cluster id -> when its scheduler's log was last read
        self._rpcs: dict[str, Any] = {}
        self._usage: dict[str, UsageMirror] = {}  # running clusters' watchdog samples
        self._tls_material: dict[str, TLSMaterial] = {}
        self._client_args: dict[str, dict[str, Any]] = {}  # comm arguments (SSL context) to reach a scheduler
        self._usage_at: dict[str, float] = {}  # when the GPU-idle check last looked
        self._encoded: dict[str, tuple[float, str]] = {}  # stopped clusters' JSON, by updated_at
        self._fresh: dict[str, str] = {}
        self._watch_task: Optional[asyncio.Task] = None
        self._backup_task: Optional[asyncio.Task] = None
        self.backup_interval = float(parse_timedelta(config.get("store.backup-interval")))
        self._lock_file = None
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
            self._take_lock()
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
        self._backup_task = asyncio.create_task(self._keep_backup())
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
                self._take_lock()
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
        for r in self._rpcs.values():
            await r.close_rpc()
        self._rpcs.clear()
        self.bus.close()
        if owner:  # a clean shutdown: the backup is the store as it is left
            await self._back_up()
        self.store.close()
        self._release_lock()

    async def __aenter__(self) -> "ClusterManager":
        return await self.start()

    async def __aexit__(self, *exc) -> None:
        await self.close()

    def _take_lock(self) -> None:
        path = self.state_dir / "manager.lock"
        with storefile.translated(self.store.path, "(its lock, manager.lock)"):  # a read-only state dir, say
            f = open(path, "a+")
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.seek(0)
            holder = f.read().strip() or "?"
            f.close()
            raise ManagerBusy(
                f"another coiled-lab manager (pid {holder}) is using {self.state_dir}; "
                "use it (e.g. through its Jupyter server), or stop it first"
            ) from None
        f.seek(0)
        f.truncate()
        f.write(str(os.getpid()))
        f.flush()
        self._lock_file = f

    def _release_lock(self) -> None:
        if self._lock_file:
            fcntl.flock(self._lock_file, fcntl.LOCK_UN)
            self._lock_file.close()
            self._lock_file = None

    # == the store's backup ===============================================================
    async def _keep_backup(self) -> None:
        """Keep the store's backup at most ``store.backup-interval`` old while this manager
        owns the store (one at once when the last is older)."""
        while True:
            await asyncio.sleep(max(0.0, self.backup_interval - storefile.backup_age(self.store.path)))
            if not await self._back_up():
                await asyncio.sleep(min(self.backup_interval, BACKUP_RETRY))

    async def _back_up(self) -> bool:
        """Back the store up now; a failure (a full disk) is logged and the previous backup kept."""
        try:
            await asyncio.to_thread(self.store.backup)
        except StoreUnavailable as exc:
            logger.warning("the store's backup failed, the previous one is kept: %s", exc)
            return False
        return True

    def restore_store(self, empty: bool = False) -> str:
        """Put the backup (or, with ``empty``, nothing) in place of a damaged store, while no
        manager uses it: what ``coiled-lab store restore`` runs. A whole store is refused
        (StoreUnavailable: nothing to restore). A server that found its store damaged at
        start does not hold it, and takes the restored one with its next request; one whose
        store was damaged under it does (ManagerBusy: stop it first). Returns what was
        done, in one line."""
        if self.started:
            raise Conflict("this manager is running; restore its store from the command line instead")
        storefile.require_damage(self.store.path)  # a whole store in use says so, not that it is in use
        self._take_lock()
        try:
            self.store.close()
            return storefile.restore(self.store.path, empty)
        finally:
            self._release_lock()

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
    async def create(self, spec: ClusterSpec | dict[str, Any], environment: Any = None) -> dict[str, Any]:
        """Record a new cluster and start provisioning it in the background; returns at once.
        ``environment`` is what package sync installs: an environment as
        :func:`coiled_lab.environment.snapshot` takes it (``to_json()``), or the hash of one
        sent before; None: this server's own, and a notification says so."""
        if not isinstance(spec, ClusterSpec):
            spec = parse_spec(spec)
        self._check_owner()
        backend = self._checked_backend(spec)  # before the limits: an estimate they ask for may call the cloud
        env = await asyncio.to_thread(self.environments.resolve, spec, environment)
        # The slot is held from the count to the record: creates running concurrently (each
        # awaits the cloud below) can never together go over max-clusters or the total $/hour.
        with self.admission.hold() as weigh:
            per_hour = await limits.check(spec, self._estimate)
            weigh(per_hour)  # right after the estimate: no await in between
            await backend.check_access(spec.region)
            if spec.backend != "local":  # 'me' that cannot be learned: refused now, not after the launch
                await asyncio.to_thread(ingress.precheck, spec.connect_via, spec.allow_ingress_from, spec.backend,
                                        lambda message: ClusterSpecError(message, "allow_ingress_from"))
            # No await from here to the insert: the record takes the slot's place in the count.
            rec, data, seq = self._record(spec, env, per_hour)
        self._publish(Event(rec.id, "state", data, data["time"], seq))
        if env is not None:
            self._tell_software(rec.id, env)
            self.environments.prune({r.state.get("environment") for r in self.store.list_clusters(live_only=True)})
        self.request(rec.id)
        return self._json(rec)

    def _record(self, spec: ClusterSpec, env: Any, per_hour: Optional[float]) -> tuple[ClusterRecord, dict, int]:
        """Insert a new cluster's record (and its first event); synchronous, so that
        :meth:`create` counts and records with no await in between."""
        cluster_id = secrets.token_hex(6)
        name = spec.name or _default_name(cluster_id)
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
        rec = ClusterRecord(
            id=cluster_id, name=name, backend=spec.backend, spec=spec.public(), status=State.pending,
            target="running", message=None, state=state, created_at=now, updated_at=now,
        )
        data = {"status": str(State.pending), "message": None, "name": name, "time": now}
        try:
            seq = self.store.insert_cluster(rec, event=("state", data))
        except NameInUse as exc:
            raise ClusterSpecError(f"name: {name!r} is not allowed: {exc}", "name") from None
        return rec, data, seq

    def _tell_software(self, cluster_id: str, env: Any) -> None:
        """Before launch, when the software is not all the asker's: what of it the VMs will not
        have, or that the server's own is synced (the backend says where it comes from and
        whether it is built when it launches the scheduler)."""
        from ..backends.envstore import skipped_lines

        lines = skipped_lines(env)
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

    async def scale(self, name_or_id: str, n_workers: int) -> dict[str, Any]:
        """Change the number of workers; the reconciler launches or retires the difference."""
        rec = self._scalable(self._find(name_or_id))
        spec = revise(rec.spec, {"n_workers": n_workers})
        with self.admission.hold(replacing=rec) as weigh:
            per_hour = await limits.check(spec, self._estimate)
            rec = self._scalable(self.store.get_cluster(rec.id))  # as it is now, after the await
            weigh(per_hour)
            if spec.n_workers == rec.spec["n_workers"]:
                return self._json(rec)
            event = None
            fields: dict[str, Any] = {"spec": spec.public()}
            if per_hour is not None:
                fields["state"] = {**rec.state, limits.ADMITTED_PER_HOUR: per_hour}
            if rec.status == State.running:
                fields["status"] = State.scaling
                event = ("state", {"status": str(State.scaling), "message": f"scaling to {spec.n_workers} workers"})
            self._update(rec, event=event, **fields)
        self.request(rec.id)
        return self._json(self.store.get_cluster(rec.id))

    def _scalable(self, rec: ClusterRecord) -> ClusterRecord:
        """``rec``, if this manager may scale it now (asked again after each await)."""
        self._check_owner()
        if not rec.live or rec.target == "stopped":
            raise Conflict(f"cluster {rec.name!r} is {rec.status}; only a live cluster can be scaled")
        return rec

    async def update(self, name_or_id: str, changes: dict[str, Any]) -> dict[str, Any]:
        """PATCH: ``n_workers`` scales; the timeouts change on the running scheduler too."""
        if not isinstance(changes, dict) or not changes:
            raise ClusterSpecError(f"expected a JSON object with some of: {', '.join(LIVE_FIELDS)}", None)
        unknown = sorted(set(changes) - set(LIVE_FIELDS))
        if unknown:
            raise ClusterSpecError(
                f"{unknown[0]}: cannot be changed on a live cluster; allowed: {', '.join(LIVE_FIELDS)}", unknown[0]
            )
        rec = self._find(name_or_id)
        self._check_owner()
        if not rec.live or rec.target == "stopped":
            raise Conflict(f"cluster {rec.name!r} is {rec.status}; only a live cluster can be changed")
        spec = revise(rec.spec, changes)  # validates every change before any of them applies
        timeouts = {k: getattr(spec, k) for k in TIMEOUT_FIELDS}
        if any(timeouts[k] != rec.spec[k] for k in TIMEOUT_FIELDS):
            # The scheduler enforces the timeouts: it hears of them first, and the store
            # records them only once it has (an answer of failure leaves both unchanged).
            if rec.state.get("address"):
                try:
                    r = await self._rpc(rec, rec.state["address"])
                    await asyncio.wait_for(r.coiled_lab_set_timeouts(timeouts=timeouts), SET_TIMEOUTS_WAIT)
                except (OSError, asyncio.TimeoutError) as exc:
                    raise SchedulerUnreachable(
                        f"the scheduler of {rec.name!r} did not answer ({exc or 'no answer'}); its timeouts are "
                        "unchanged: try again in a moment") from None
            rec = self._update(self.store.get_cluster(rec.id) or rec, spec={**rec.spec, **timeouts})
            self.request(rec.id)
        if "n_workers" in changes:
            return await self.scale(rec.id, spec.n_workers)
        return self._json(self.store.get_cluster(rec.id))

    async def stop(self, name_or_id: str) -> dict[str, Any]:
        """Ask for the cluster to stop; returns at once (watch events or :meth:`wait`)."""
        rec = self._find(name_or_id)
        if rec.status == State.stopped:
            return self._json(rec)
        self._check_owner()
        if rec.target != "stopped":
            self._update(
                rec, target="stopped", status=State.stopping,
                event=("state", {"status": str(State.stopping), "message": "stop requested"}),
            )
        self.request(rec.id)
        return self._json(self.store.get_cluster(rec.id))

    async def get(self, name_or_id: str) -> dict[str, Any]:
        return self._json(self._find(name_or_id))

    async def list(self, live_only: bool = False) -> list[dict[str, Any]]:
        return [self._json(r) for r in self.store.list_clusters(live_only=live_only)]

    async def list_json(self, live_only: bool = False) -> str:
        """:meth:`list` already encoded as a JSON array, for the REST API. A stopped
        cluster's JSON never changes, so it is encoded once and reused until its row does."""
        versions = self.store.versions(live_only)
        wanted = [cid for cid, updated, status in versions
                  if status not in FINAL or self._encoded.get(cid, (None,))[0] != updated]
        for rec in self.store.get_clusters(wanted):
            if rec.status in FINAL:
                self._encoded[rec.id] = (rec.updated_at, json.dumps(self._json(rec)))
            else:
                self._encoded.pop(rec.id, None)
                self._fresh[rec.id] = json.dumps(self._json(rec))
        parts = [self._fresh.pop(cid) if cid in self._fresh else self._encoded[cid][1] for cid, _, _ in versions]
        return "[" + ",".join(parts) + "]"

    async def logs(
        self,
        name_or_id: str,
        since: Optional[float] = None,
        instance: Optional[str] = None,
        q: Optional[str] = None,
        level: Optional[str] = None,
        limit: Optional[int] = 1000,
    ) -> list[dict[str, Any]]:
        """The cluster's log records after ``since``, filtered; the newest ``limit`` (None: all)."""
        rec = self._find(name_or_id)
        records = await self.backend(rec.backend).logs(self._context(rec), since=since)
        records = [r for r in records if matches(r, instance, q, level)]
        return [r.to_json() for r in (records[-limit:] if limit else records)]

    async def connection(self, name_or_id: str) -> dict[str, Any]:
        """What a client needs to connect: scheduler address and the cluster's TLS material."""
        rec = self._find(name_or_id)
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
        self, name_or_id: str, states: tuple[str, ...] = ("running",), timeout: Optional[float] = None
    ) -> dict[str, Any]:
        """Wait until the cluster reaches one of ``states`` (or a final state); return it."""
        rec = self._find(name_or_id)
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

            return self._json(await asyncio.wait_for(_until(), timeout))
        finally:
            sub.close()

    async def notifications(self, name_or_id: str) -> list[dict[str, Any]]:
        """Everything the cluster's user was told, oldest first (kept after it stops)."""
        rec = self._find(name_or_id)
        return [{"time": e["time"], **e["data"]} for e in self.store.events(rec.id, limit=100_000)
                if e["kind"] == "notification"]

    async def usage(self, name_or_id: str, since: Optional[float] = None,
                    wait: Optional[float] = FIRST_WAIT) -> dict[str, Any]:
        """The watchdog's recent samples (workers, clients, tasks, CPU, memory, GPU), and
        when the scheduler was last read (``as_of``; None while its first read, waited for
        up to ``wait`` seconds, has not answered)."""
        return await self._usage_of(self._find(name_or_id)).get(since, wait)

    def subscribe(self, cluster_id: Optional[str] = None, kinds: Optional[set[str]] = None) -> Subscription:
        return self.bus.subscribe(cluster_id, kinds)

    def events_since(self, after: int, cluster_id: Optional[str] = None) -> list[dict[str, Any]]:
        return self.store.events(cluster_id, after=after)

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

    async def estimate(self, spec: ClusterSpec | dict[str, Any]) -> dict[str, Any]:
        """What a spec would cost per hour, before anything is launched."""
        return await self._estimate(spec if isinstance(spec, ClusterSpec) else parse_spec(spec))

    async def cleanup(self, dry_run: bool = False) -> dict[str, Any]:
        """Find processes/resources of clusters the store does not consider live; remove them.

        One backend at a time, each on its own: a cloud that cannot be reached (or has no
        credentials) is reported in ``errors`` and the other backends are still cleaned.
        Returns ``{"found": [{id, name, instances}], "errors": [{backend, error}]}``."""
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

    # == reconciliation ===================================================================
    def request(self, cluster_id: str, delay: float = 0) -> None:
        """Ask for a reconcile pass; requests made while one runs coalesce into one more."""
        if not self.owner:
            return
        if delay > 0:
            if cluster_id not in self._later:
                loop = asyncio.get_running_loop()
                self._later[cluster_id] = loop.call_later(delay, self._fire_later, cluster_id)
            return
        self._pending.add(cluster_id)
        if cluster_id not in self._tasks:
            self._tasks[cluster_id] = asyncio.create_task(self._worker(cluster_id))

    def _fire_later(self, cluster_id: str) -> None:
        self._later.pop(cluster_id, None)
        self.request(cluster_id)

    async def _worker(self, cluster_id: str) -> None:
        try:
            while cluster_id in self._pending and self.owner:
                self._pending.discard(cluster_id)
                try:
                    await self._reconcile(cluster_id)
                    self._failures.pop(cluster_id, None)
                except asyncio.CancelledError:
                    raise
                except Exception as exc:  # noqa: BLE001 - any failure is retried, then reported
                    await self._failed(cluster_id, exc)
        finally:
            self._tasks.pop(cluster_id, None)

    async def _failed(self, cluster_id: str, exc: Exception) -> None:
        n = self._failures.get(cluster_id, 0) + 1
        self._failures[cluster_id] = n
        logger.warning("reconcile of %s failed (%d/%d): %s", cluster_id, n, self.max_retries, exc, exc_info=True)
        rec = self.store.get_cluster(cluster_id)
        if rec is None or rec.status in FINAL:
            return
        if n < self.max_retries:
            self.request(cluster_id, delay=min(0.5 * 2 ** (n - 1), 30))
            return
        self._failures.pop(cluster_id, None)
        await self._fail(rec, f"{type(exc).__name__}: {exc}")

    async def _fail(self, rec: ClusterRecord, message: str) -> None:
        """Give up on a cluster: stop everything it has, then mark it ``error``."""
        try:
            await self._teardown(rec)
        except Exception as exc:  # noqa: BLE001
            message += f" (and stopping its instances failed: {exc}; run `coiled-lab cleanup`)"
        self._transition(rec, State.error, message, target="stopped", stopped_at=time.time())

    async def _watch(self) -> None:
        """Look at every live cluster now and then: catches clusters that stopped themselves
        (idle timeout), lost workers (to be replaced) and schedulers that died."""
        while True:
            await asyncio.sleep(self.check_interval)
            for rec in self.store.list_clusters(live_only=True):
                self.request(rec.id)

    async def _reconcile(self, cluster_id: str) -> None:
        rec = self.store.get_cluster(cluster_id)
        if rec is None or rec.status in FINAL:
            return
        backend = self.backend(rec.backend)
        if rec.target == "stopped":
            await self._teardown(rec)
            self._transition(rec, State.stopped, "stopped on request", stopped_at=time.time())
            return

        ctx = self._context(rec)
        spec = ctx.spec
        if rec.status == State.pending:
            rec = self._transition(rec, State.provisioning, None)
            self._progress(rec, "network")

        # -- network -------------------------------------------------------------------
        if not rec.state.get("network_ready"):
            state = {**rec.state, **(await backend.ensure_network(ctx)), "network_ready": True}
            rec = self._update(rec, state=state)
            ctx.state = state

        # -- what runs, versus what the store believes ----------------------------------
        running = {i.id: i for i in await backend.describe(ctx)}
        known = {i.id: i for i in self.store.instances(rec.id)}
        now = time.time()
        lost = [i for i in known.values() if i.id not in running and now - i.launched_at > backend.describe_grace]
        if lost:
            self.store.mark_terminated(rec.id, [i.id for i in lost])
            for i in lost:
                known.pop(i.id)
        adopted = [i for i in running.values() if i.id not in known]
        if adopted:  # launched, but the record of it was lost (e.g. a crash right after)
            self.store.add_instances(rec.id, adopted)
            known.update({i.id: i for i in adopted})

        schedulers = [i for i in known.values() if i.role == "scheduler"]
        if len(schedulers) > 1:
            # A launch request whose answer was lost and that was sent again (a retry, or
            # a manager killed mid-launch) can start a second scheduler. Keep the one
            # clients know (the recorded address), else the first; the others would only cost.
            recorded = rec.state.get("address")
            addresses = {i.id: await backend.scheduler_address(ctx, i) for i in schedulers}
            schedulers.sort(key=lambda i: (addresses[i.id] != recorded, i.launched_at, i.id))
            extra = schedulers[1:]
            logger.warning("cluster %s: stopping duplicate scheduler(s) %s", rec.name, [i.id for i in extra])
            await backend.stop_instances(ctx, extra)
            self.store.mark_terminated(rec.id, [i.id for i in extra])
            for i in extra:
                known.pop(i.id)
        scheduler = schedulers[0] if schedulers else None
        workers = [i for i in known.values() if i.role == "worker"]

        # -- scheduler -----------------------------------------------------------------
        if scheduler is None:
            if rec.state.get("scheduler_launched"):
                await self._scheduler_gone(rec, ctx, workers)
                return
            self._progress(rec, "scheduler")
            # Counted before the request: a backend can tell a first launch from one after
            # an attempt that may have left something behind (killed, or an answer lost).
            rec = self._update(rec, state={**rec.state, "scheduler_attempts": rec.state.get("scheduler_attempts", 0) + 1})
            ctx.state = dict(rec.state)
            scheduler = await backend.launch_scheduler(ctx)
            self.store.add_instances(rec.id, [scheduler])
            rec = self._update(rec, state={**rec.state, "scheduler_launched": time.time()})
            rec = await self._update_cost(rec)

        # -- workers: launch every missing one at once, as soon as the scheduler exists ---
        lost_workers = [i for i in lost if i.role == "worker"]
        if lost_workers and rec.status == State.provisioning:
            failed = rec.state.get("failed_workers", 0) + len(lost_workers)
            rec = self._update(rec, state={**rec.state, "failed_workers": failed})
            if failed > max(3, spec.n_workers):
                tail = await self._log_tail(ctx, lost_workers[-1].id)
                await self._fail(rec, f"workers keep exiting during start ({failed} so far); last lines:\n{tail}")
                return
        missing = spec.n_workers - len(workers)
        if missing > 0:
            ctx.instances = [scheduler, *workers]  # the workers join this scheduler, not a duplicate
            new = await backend.launch_workers(ctx, missing)
            self.store.add_instances(rec.id, new)
            workers.extend(new)
            rec = await self._update_cost(rec)
            before = rec.state.get("observed", {})
            rec = self._observe(rec, before.get("ready", 0), len(workers), before.get("lifetime"))

        # -- observe through the scheduler ---------------------------------------------
        address = rec.state.get("address") or await backend.scheduler_address(ctx, scheduler)
        if address and address != rec.state.get("address"):
            rec = self._update(rec, state={**rec.state, "address": address})
        info = await self._identity(rec, address) if address else None
        if info is None:
            if address and (why := await self._unreachable(rec, ctx, address)):
                return await self._fail(rec, why)
            return self._not_yet(rec, ctx, "scheduler")
        if not rec.state.get("reached"):  # once reached, a lost connection is not a closed door
            rec = self._update(rec, state={**rec.state, "reached": True})
        dashboard = _dashboard(address, info)
        if dashboard and dashboard != rec.state.get("dashboard"):
            rec = self._update(rec, state={**rec.state, "dashboard": dashboard})

        connected = {w.get("name") for w in info["workers"].values()}
        if len(workers) > spec.n_workers:
            # Retire the extras gracefully (their data moves to the others), newest and
            # not-yet-connected first, then stop their machines.
            workers.sort(key=lambda i: (i.id in connected, -i.launched_at))
            extras = workers[: len(workers) - spec.n_workers]
            await self._retire(rec, [i.id for i in extras if i.id in connected])
            await backend.stop_instances(ctx, extras)
            self.store.mark_terminated(rec.id, [i.id for i in extras])
            rec = await self._update_cost(rec)
            workers = workers[len(extras):]
        if time.time() - (rec.state.get("cost") or {}).get("as_of", 0) > self.cost_interval:
            rec = await self._update_cost(rec)
        ready = sum(1 for i in workers if i.id in connected)
        rec = self._observe(rec, ready=ready, launched=len(workers), lifetime=info.get("coiled_lab_lifetime"))
        rec = self._observe_boot(rec, (info.get("coiled_lab_lifetime") or {}).get("boot"))
        if rec.status == State.running:
            await self._check_notifications(rec)

        if ready >= spec.n_workers and len(workers) == spec.n_workers:
            if rec.status in (State.provisioning, State.scaling):
                rec = self._update(rec, state={**rec.state, "failed_workers": 0})
                self._transition(rec, State.running, None)
            return
        self._not_yet(rec, ctx, "workers")

    def _not_yet(self, rec: ClusterRecord, ctx: ClusterContext, step: str) -> None:
        """Not converged: look again shortly, unless provisioning has taken too long."""
        started = rec.state.get("scheduler_launched") or rec.created_at
        limit = float(config.get(f"{rec.backend}.start-timeout", 600))
        if rec.status == State.provisioning and time.time() - started > limit:
            raise TimeoutError(f"the {step} did not become ready within {limit:g}s")
        self.request(rec.id, delay=0.1 if rec.status in (State.provisioning, State.scaling) else self.check_interval)

    async def _scheduler_gone(self, rec: ClusterRecord, ctx: ClusterContext, workers: list[Instance]) -> None:
        """The scheduler is gone while the cluster should run: it ended itself (a timeout)
        or crashed. Either way the cluster is over; stop what is left and say why (its log
        says it, when it can be read)."""
        records, unread = await self._read_logs(ctx)
        reason = next((r.message.split(STOP_MARKER, 1)[1].strip() for r in reversed(records)
                       if STOP_MARKER in r.message), None)
        await self._teardown(rec)
        if reason:
            self._transition(rec, State.stopped, f"stopped itself: {reason}", target="stopped", stopped_at=time.time())
        else:
            tail = unread or f"last lines:\n{_format_tail([r for r in records if r.role == 'scheduler'])}"
            self._transition(rec, State.error, f"the scheduler exited unexpectedly; {tail}",
                             target="stopped", stopped_at=time.time())

    async def _teardown(self, rec: ClusterRecord) -> None:
        backend = self.backend(rec.backend)
        ctx = self._context(rec, load_tls=False)
        instances = {i.id: i for i in self.store.instances(rec.id)}
        instances.update({i.id: i for i in await backend.describe(ctx)})
        if instances:
            await backend.stop_instances(ctx, list(instances.values()))
        await backend.cleanup(ctx)
        self.store.mark_terminated(rec.id, list(instances))
        await self._update_cost(self.store.get_cluster(rec.id))
        await self._forget_rpc(rec.id)
        for kept in (self._usage, self._tls_material, self._client_args, self._reach_checked):
            kept.pop(rec.id, None)

    # == talking to the scheduler =========================================================
    async def _identity(self, rec: ClusterRecord, address: str) -> Optional[dict[str, Any]]:
        """The scheduler's identity (plus our lifetime plugin's clocks), or None if unreachable."""
        r = await self._rpc(rec, address)
        try:
            info = await asyncio.wait_for(r.identity(n_workers=-1), 5)
        except (OSError, asyncio.TimeoutError, EnvironmentError):
            await self._forget_rpc(rec.id)
            return None
        try:
            info["coiled_lab_lifetime"] = await asyncio.wait_for(r.coiled_lab_lifetime(), 5)
        except Exception:  # noqa: BLE001 - an older scheduler without the plugin
            info["coiled_lab_lifetime"] = None
        return info

    async def _unreachable(self, rec: ClusterRecord, ctx: ClusterContext, address: str) -> Optional[str]:
        """Why this server cannot reach a scheduler that its own log says is up (for
        :data:`UNREACHABLE_AFTER` seconds), or None while that is not known. The log comes
        through the cloud's logging service, which this server reaches whatever the ingress
        rules say, so a closed door is told within a minute, not after start-timeout."""
        launched = rec.state.get("scheduler_launched")
        now = time.time()
        # Only a scheduler this server has never reached: one it has reached and lost (a
        # network blip, or the scheduler ending itself) is the watch's business, not this.
        if rec.status != State.provisioning or rec.state.get("reached") or not launched or \
                now - launched < UNREACHABLE_AFTER or \
                time.monotonic() - self._reach_checked.get(rec.id, 0) < REACH_CHECK_INTERVAL:
            return None
        self._reach_checked[rec.id] = time.monotonic()
        try:
            records = await self.backend(rec.backend).logs(ctx, since=launched - 60)
        except Exception as exc:  # noqa: BLE001 - a log read is bookkeeping: look again later
            logger.info("cluster %s: could not read the scheduler's log (%s)", rec.name, exc)
            return None
        up = next((r for r in records if r.role == "scheduler" and STARTED["scheduler"] in r.message), None)
        if up is None or now - up.time < UNREACHABLE_AFTER:
            return None
        head = f"this server cannot reach the scheduler at {address}, up for {now - up.time:.0f} s"
        if rec.state.get("connect_via") == "public":
            return (f"{head}: its ports are open to {rec.state.get('ingress_cidr')} only, which does not hold this "
                    "server's address as the cloud sees it; set allow_ingress_from to a CIDR that does, or 'me'")
        return (f"{head} over the cluster's private network, which this server is not in (nor peered with); "
                "use connect_via='auto' or 'public'")

    def _usage_of(self, rec: ClusterRecord) -> UsageMirror:
        """The copy of a running cluster's usage samples (:mod:`.usage`)."""
        address = rec.state.get("address")
        if not rec.live or not address:
            raise Conflict(f"cluster {rec.name!r} is {rec.status}; usage is only known while it runs")
        mirror = self._usage.get(rec.id)
        if mirror is None or mirror.address != address:

            async def fetch(since: Optional[float]) -> dict[str, Any]:
                """The watchdog's samples from the scheduler (over the cluster's TLS comms)."""
                r = await self._rpc(rec, address)
                try:
                    return await asyncio.wait_for(r.coiled_lab_usage(since=since), 10)
                except (OSError, asyncio.TimeoutError) as exc:
                    raise Conflict(f"the scheduler of {rec.name!r} did not answer: {exc}") from None

            mirror = self._usage[rec.id] = UsageMirror(fetch, address)
        return mirror

    async def _retire(self, rec: ClusterRecord, names: list[str]) -> None:
        if not names or not rec.state.get("address"):
            return
        r = await self._rpc(rec, rec.state["address"])
        try:
            # Move their data off them; stopping the machine (next) closes them.
            await asyncio.wait_for(r.retire_workers(names=names, close_workers=False, remove=False), 60)
        except Exception as exc:  # noqa: BLE001 - stopping the machines follows anyway
            logger.warning("graceful retirement of %s failed: %s", names, exc)

    async def _rpc(self, rec: ClusterRecord, address: str):
        from distributed.core import rpc

        r = self._rpcs.get(rec.id)
        if r is None or r.address != address:
            # An SSL context is made from PEM files written for it: once per cluster.
            args = self._client_args.get(rec.id)
            if args is None:
                args = self._client_args[rec.id] = self._tls(rec).security().get_connection_args("client")
            r = rpc(address, timeout=3, connection_args=args)
            self._rpcs[rec.id] = r
        return r

    async def _forget_rpc(self, cluster_id: str) -> None:
        r = self._rpcs.pop(cluster_id, None)
        if r is not None:
            await r.close_rpc()

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

    def _find(self, name_or_id: str) -> ClusterRecord:
        rec = self.store.find_cluster(str(name_or_id))
        if rec is None:
            raise NotFound(name_or_id)
        return rec

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

    def _update(self, rec: ClusterRecord, event: Optional[tuple[str, dict]] = None, **fields: Any) -> ClusterRecord:
        if event:
            event[1].setdefault("time", time.time())
        seq = self.store.update_cluster(rec.id, event=event, **fields)
        if event:
            self._publish(Event(rec.id, event[0], event[1], event[1]["time"], seq))
        return self.store.get_cluster(rec.id)

    def _transition(self, rec: ClusterRecord, status: State, message: Optional[str], **fields: Any) -> ClusterRecord:
        current = self.store.get_cluster(rec.id)
        check_transition(current.status, status)
        if current.status == status and current.message == message:
            return current
        data = {"status": str(status), "message": message}
        logger.info("cluster %s (%s): %s%s", rec.name, rec.id, status, f" - {message}" if message else "")
        return self._update(current, event=("state", data), status=status, message=message, **fields)

    def _progress(self, rec: ClusterRecord, step: str, **data: Any) -> None:
        payload = {"step": step, **data, "time": time.time()}
        seq = self.store.add_event(rec.id, "progress", payload)
        self._publish(Event(rec.id, "progress", payload, payload["time"], seq))

    def _observe(self, rec: ClusterRecord, ready: int, launched: int, lifetime: Optional[dict]) -> ClusterRecord:
        """Persist what the scheduler reports (so any process can show it); a change in
        worker counts is also a progress event."""
        target = rec.spec["n_workers"]
        clocks = {k: v for k, v in (lifetime or {}).items() if k in CLOCKS}
        observed = {"ready": ready, "launched": launched, "target": target, "lifetime": clocks or None}
        before = rec.state.get("observed", {})
        if observed == before:
            return rec
        rec = self._update(rec, state={**rec.state, "observed": observed})
        if (before.get("ready"), before.get("launched"), before.get("target")) != (ready, launched, target):
            self._progress(rec, "workers", ready=ready, target=target, launched=launched)
        return rec

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

    def _observe_boot(self, rec: ClusterRecord, boot: Optional[dict[str, Any]]) -> ClusterRecord:
        """Keep how the scheduler's VM booted (its Python, the phases and their seconds,
        what was installed) in the cluster's state for the UIs, and tell the user once
        which requirements it could not install."""
        if not isinstance(boot, dict):
            return rec
        kept = notifications.boot_summary(boot)
        if kept == rec.state.get("boot"):
            return rec  # seen (and told) in an earlier pass
        rec = self._update(rec, state={**rec.state, "boot": kept})
        for notice in notifications.skipped_packages(kept):
            self.notify(rec.id, notice)
        return self.store.get_cluster(rec.id)

    async def _estimate(self, spec: ClusterSpec) -> dict[str, Any]:
        from ..pricing import estimate

        backend = None if spec.backend == "local" else self._checked_backend(spec)
        return await estimate(spec, backend, self.prices)

    async def _check_notifications(self, rec: ClusterRecord) -> None:
        """Tell what a running cluster's user should know; stop it at its budget. What the
        notices are made from (the scheduler's clocks, the cost, usage samples) may be
        missing or malformed: that is told once, and never fails the pass."""
        notices: list[notifications.Notice] = []
        try:
            observed = rec.state.get("observed", {})
            notices += notifications.shutdown_soon(observed.get("lifetime"))
            notices += notifications.budget(extrapolate(rec.state.get("cost")),
                                            config.get("limits.max-cost-per-cluster"))
        except Exception as exc:  # noqa: BLE001 - bookkeeping: reported, never raised
            self._bookkeeping_failed(rec, "notifications", "the notifications of this cluster could not be worked "
                                     "out", exc)
        if config.get("telemetry.gpu") and time.time() - self._usage_at.get(rec.id, 0) > 30:
            self._usage_at[rec.id] = time.time()
            try:
                mirror = self._usage_of(rec)
                await mirror.refresh()
                notices += notifications.gpu_idle(list(mirror.samples))
            except Conflict:  # the scheduler did not answer: the reconcile pass deals with that
                pass
            except Exception as exc:  # noqa: BLE001 - bookkeeping: reported, never raised
                self._bookkeeping_failed(rec, "usage", "the usage samples of this cluster could not be read", exc)
        for notice in notices:
            self.notify(rec.id, notice)
            if notice.kind == "budget" and notice.level == "error":
                await self.stop(rec.id)

    def _bookkeeping_failed(self, rec: ClusterRecord, kind: str, what: str, exc: BaseException) -> None:
        """Tell (once per cluster and ``kind``) that some bookkeeping failed and why."""
        logger.warning("cluster %s: %s: %s", rec.name, what, exc, exc_info=exc)
        self.notify(rec.id, notifications.Notice(f"{kind}:failed", kind, "warning",
                                                 f"{what} ({type(exc).__name__}: {exc})"))

    def notify(self, cluster_id: str, notice: notifications.Notice) -> None:
        """Record and send a notification, once per situation (its key)."""
        rec = self.store.get_cluster(cluster_id)
        told = rec.state.get("notified", [])
        if notice.key in told:
            return
        data = {"kind": notice.kind, "level": notice.level, "message": notice.message, "key": notice.key}
        self._update(rec, event=("notification", data), state={**rec.state, "notified": [*told, notice.key]})

    async def _update_cost(self, rec: ClusterRecord) -> ClusterRecord:
        """Recompute the cost from every instance's launch/terminate times; persist it
        (kept after the cluster stops) and send it as a ``cost`` event. A price that cannot
        be had makes the cost unknown, told once: bookkeeping never fails a pass, let alone
        tears a cluster down. It waits for prices twice :func:`~coiled_lab.pricing.timeout`
        at most: a price look-up's own wait, and as much for a backend's other look-ups."""
        from ..pricing import accrued, timeout, unknown_cost

        try:
            backend = self.backend(rec.backend)
            within = Deadline(2 * timeout())
            await self.prices.adopt(rec.backend, backend, within)  # its account's prices, even with no estimate made
            instances = self.store.instances(rec.id, live_only=False)
            prices: dict[tuple, float] = {}
            for inst in instances:
                key = (inst.vm_type, inst.zone, inst.spot)
                if key not in prices:
                    prices[key] = await within.wait(backend.instance_price(inst, self.prices),
                                                    f"the price of {inst.vm_type}")
            cost = accrued(instances, lambda i: prices[(i.vm_type, i.zone, i.spot)])
        except Exception as exc:  # noqa: BLE001 - bookkeeping: reported, never raised
            self._bookkeeping_failed(rec, "cost", "the cost of this cluster is unknown", exc)
            cost = unknown_cost(f"{type(exc).__name__}: {exc}")
            rec = self.store.get_cluster(rec.id)  # as the notification left it (its key among those told)
        rec = self._update(rec, state={**rec.state, "cost": cost})
        self._publish(Event(rec.id, "cost", cost, cost["as_of"]))
        return rec

    def _publish(self, event: Event) -> None:
        self.bus.publish(event)

    async def _log_tail(self, ctx: ClusterContext, instance: str, n: int = 20) -> str:
        records, unread = await self._read_logs(ctx)
        return unread or _format_tail([r for r in records if r.instance == instance], n)

    async def _read_logs(self, ctx: ClusterContext) -> tuple[list[LogRecord], Optional[str]]:
        """The cluster's log records, or none and why they could not be read: a message
        that quotes the logs is still given (and the pass goes on) when the log service fails."""
        try:
            return await self.backend(ctx.spec.backend).logs(ctx), None
        except Exception as exc:  # noqa: BLE001 - reading logs is bookkeeping
            logger.warning("cluster %s: its logs could not be read: %s", ctx.name, exc)
            return [], f"its logs could not be read ({type(exc).__name__}: {exc})"

    def _json(self, rec: ClusterRecord) -> dict[str, Any]:
        d = rec.to_json()
        observed = rec.state.get("observed", {}) if rec.live else {}
        d["workers"] = {
            "target": rec.spec["n_workers"],
            "launched": observed.get("launched", 0),
            "ready": observed.get("ready", 0),
        }
        d["scheduler_address"] = rec.state.get("address") if rec.live else None
        d["dashboard"] = rec.state.get("dashboard") if rec.live else None
        clocks = observed.get("lifetime") if rec.live else None
        try:
            d["time_left"] = time_left(clocks) if clocks else None
        except (KeyError, TypeError, AttributeError):  # clocks a scheduler sent malformed: unknown
            d["time_left"] = None
        d["cost"] = extrapolate(rec.state.get("cost")) if rec.live else rec.state.get("cost")
        d.pop("state", None)  # backend-internal ids stay on the server
        return d


def _default_name(cluster_id: str) -> str:
    user = re.sub(r"[^a-z0-9-]+", "-", getpass.getuser().lower()).strip("-") or "user"
    return f"{user[:40]}-{cluster_id[:6]}"


def _dashboard(address: str, info: dict[str, Any]) -> Optional[str]:
    port = (info.get("services") or {}).get("dashboard")
    if not port:
        return None
    host = address.split("://", 1)[-1].rsplit(":", 1)[0]
    return f"http://{host}:{port}"


def _format_tail(records: list[LogRecord], n: int = 20) -> str:
    return "\n".join(r.format() for r in records[-n:]) or "(no log lines)"
