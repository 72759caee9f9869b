"""The reconciler: the loop that moves each cluster toward what its record says it should be.

Like ``distributed.deploy.SpecCluster`` and dask-gateway's DB backend, a verb only writes
the target or the spec and asks for a pass; a pass alone moves the cluster through the
state machine, one idempotent step at a time (:meth:`Reconciler._reconcile` reads as the
list of them):

    target stopped -> stop every instance, clean up, ``stopped``
    target running -> network -> inventory -> scheduler -> all missing workers at once ->
                      reach the scheduler -> retire extras -> observe -> ``running``

Passes for one cluster never overlap and requests made while one runs coalesce into a
single next pass. A pass that has not converged asks for another one shortly; a pass
that fails is retried with backoff and, after ``manager.max-retries`` in a row (counted in
the store), the cluster is stopped and marked ``error`` with the reason.

:class:`Reconciler` is the half of :class:`~coiled_lab.control.manager.ClusterManager`
that does this; the manager holds the verbs, the lifecycle and the record helpers.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any, Optional

from .. import config
from ..backends import ClusterContext
from ..backends.base import Instance
from ..bootstrap.lifetime import CLOCKS, STOP_MARKER
from ..bootstrap.vm import STARTED
from ..deadline import Deadline
from ..errors import Conflict
from ..logs import LogRecord
from ..pricing import extrapolate
from . import adaptive, notifications
from .callers import BUDGET
from .events import Event
from .states import FINAL, State, Target, check_transition
from .store import ClusterRecord
from .usage import UsageMirror
from .views import left

logger = logging.getLogger("coiled_lab.manager")

FAILURES = "failed_passes"  # the cluster's state key: failed passes in a row
UNREACHABLE_AFTER = 20.0  # seconds a scheduler may say it is up while this server cannot reach it
REACH_CHECK_INTERVAL = 10.0  # seconds between two reads of an unreachable scheduler's log


class Reconciler:
    """The reconciling half of the manager (a mixin: it uses the manager's store, backends,
    scheduler links and record helpers)."""

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
                    self._succeeded(cluster_id)
                except asyncio.CancelledError:
                    raise
                except Exception as exc:  # noqa: BLE001 - any failure is retried, then reported
                    await self._failed(cluster_id, exc)
        finally:
            self._tasks.pop(cluster_id, None)

    def _succeeded(self, cluster_id: str) -> None:
        """A pass went through: the count of failed passes starts again."""
        rec = self.store.get_cluster(cluster_id)
        if rec is not None and rec.state.get(FAILURES):
            self._update(rec, state={k: v for k, v in rec.state.items() if k != FAILURES})

    async def _failed(self, cluster_id: str, exc: Exception) -> None:
        """A pass failed: try again after a backoff (``manager.retry-backoff``, doubling up to
        ``retry-backoff-max``); after ``max-retries`` failed passes in a row, give up. The
        count lives in the cluster's record, so a restarted server goes on counting."""
        rec = self.store.get_cluster(cluster_id)
        if rec is None or rec.status in FINAL:
            return
        n = rec.state.get(FAILURES, 0) + 1
        logger.warning("reconcile of %s failed (%d/%d): %s", cluster_id, n, self.max_retries, exc, exc_info=True)
        if n < self.max_retries:
            self._update(rec, state={**rec.state, FAILURES: n})
            self.request(cluster_id, delay=min(self.retry_backoff * 2 ** (n - 1), self.retry_backoff_max))
            return
        await self._fail(rec, f"{type(exc).__name__}: {exc}")

    async def _fail(self, rec: ClusterRecord, message: str) -> None:
        """Give up on a cluster: stop everything it has, then mark it ``error``."""
        try:
            await self._teardown(rec)
        except Exception as exc:  # noqa: BLE001
            message += f" (and stopping its instances failed: {exc}; run `coiled-lab cleanup`)"
        self._transition(rec, State.error, message, target=Target.stopped, stopped_at=time.time())

    async def _watch(self) -> None:
        """Look at every live cluster now and then: catches clusters that stopped themselves
        (idle timeout), lost workers (to be replaced) and schedulers that died."""
        while True:
            await asyncio.sleep(self.check_interval)
            for rec in self.store.list_clusters(live_only=True):
                self.request(rec.id)

    async def _reconcile(self, cluster_id: str) -> None:
        """One idempotent pass toward the target, one step after another; a step that has
        not converged asks for another pass (:meth:`_not_yet`) and returns."""
        rec = self.store.get_cluster(cluster_id)
        if rec is None or rec.status in FINAL:
            return
        rec = self._acknowledge(rec)
        if rec.target == Target.stopped:
            await self._teardown(rec)
            self._transition(rec, State.stopped, "stopped on request", stopped_at=time.time())
            return
        ctx = self._context(rec)
        if rec.status == State.pending:
            rec = self._transition(rec, State.provisioning, None)
            self._progress(rec, "network")
        rec = await self._ensure_network(rec, ctx)
        known, lost = await self._inventory(rec, ctx)
        scheduler = await self._one_scheduler(rec, ctx, known)
        workers = [i for i in known.values() if i.role == "worker"]
        if scheduler is None:
            if rec.state.get("scheduler_launched"):
                return await self._scheduler_gone(rec, ctx, workers)
            rec, scheduler = await self._launch_scheduler(rec, ctx)
        if await self._workers_keep_failing(rec, ctx, [i for i in lost if i.role == "worker"]):
            return
        rec = await self._launch_workers(rec, ctx, scheduler, workers)
        rec, info = await self._reach_scheduler(rec, ctx, scheduler)
        if info is None:
            return
        connected = {w.get("name") for w in info["workers"].values()}
        rec, workers = await self._retire_extras(rec, ctx, workers, connected)
        if time.time() - (rec.state.get("cost") or {}).get("as_of", 0) > self.cost_interval:
            rec = await self._update_cost(rec)
        ready = sum(1 for i in workers if i.id in connected)
        lifetime = info.get("coiled_lab_lifetime")
        rec = self._observe(rec, ready=ready, launched=len(workers), lifetime=lifetime)
        rec = self._observe_boot(rec, (lifetime or {}).get("boot"))
        if why := _not_all_synced(ctx.spec, rec.state.get("boot")):
            return await self._fail(rec, why)
        if await adaptive.step(self, rec, rec.state.get("address")):
            return  # scaled toward the scheduler's target: the next pass works toward the new size
        if rec.status == State.running:
            await self._check_notifications(rec)
        if ready >= ctx.spec.n_workers and len(workers) == ctx.spec.n_workers:
            if rec.status in (State.provisioning, State.scaling):
                if self.store.get_cluster(rec.id).spec["n_workers"] != ctx.spec.n_workers:
                    return self._not_yet(rec, ctx, "workers")  # resized during this pass: the next one judges it
                rec = self._update(rec, state={**rec.state, "failed_workers": 0})
                self._transition(rec, State.running, None)
            return
        self._not_yet(rec, ctx, "workers")

    # -- the steps of a pass, in order ------------------------------------------------------
    def _acknowledge(self, rec: ClusterRecord) -> ClusterRecord:
        """The status a verb's change implies, through the state machine: a stop asked
        (target ``stopped``) is ``stopping``; a running cluster whose size changed is
        ``scaling``. Verbs write only the target or the spec; they call this right after, so
        their answer shows the new status, and every pass calls it first."""
        if rec.target == Target.stopped:
            if rec.status not in FINAL and rec.status != State.stopping:
                return self._transition(rec, State.stopping, "stop requested")
            return rec
        wanted = rec.spec["n_workers"]
        if rec.status == State.running and rec.state.get("observed", {}).get("target", wanted) != wanted:
            return self._transition(rec, State.scaling, f"scaling to {wanted} workers")
        return rec

    async def _ensure_network(self, rec: ClusterRecord, ctx: ClusterContext) -> ClusterRecord:
        if rec.state.get("network_ready"):
            return rec
        state = {**rec.state, **(await self.backend(rec.backend).ensure_network(ctx)), "network_ready": True}
        ctx.state = state
        return self._update(rec, state=state)

    async def _inventory(self, rec: ClusterRecord, ctx: ClusterContext) -> tuple[dict[str, Instance], list[Instance]]:
        """What runs, versus what the store believes: instances gone for longer than the
        backend's grace are marked terminated (and returned as lost); running ones the store
        never heard of (launched, but their record lost in a crash) are adopted."""
        backend = self.backend(rec.backend)
        running = {i.id: i for i in await backend.describe(ctx)}
        known = {i.id: i for i in self.store.instances(rec.id)}
        now = time.time()
        lost = [i for i in known.values() if i.id not in running and now - i.launched_at > backend.describe_grace]
        if lost:
            self.store.mark_terminated(rec.id, [i.id for i in lost])
            for i in lost:
                known.pop(i.id)
        adopted = [i for i in running.values() if i.id not in known]
        if adopted:
            self.store.add_instances(rec.id, adopted)
            known.update({i.id: i for i in adopted})
        return known, lost

    async def _one_scheduler(self, rec: ClusterRecord, ctx: ClusterContext,
                             known: dict[str, Instance]) -> Optional[Instance]:
        """The cluster's scheduler, if one runs. A launch request whose answer was lost and
        that was sent again (a retry, or a manager killed mid-launch) can start a second
        one: keep the one clients know (the recorded address), else the first; the others
        would only cost."""
        schedulers = [i for i in known.values() if i.role == "scheduler"]
        if len(schedulers) > 1:
            backend = self.backend(rec.backend)
            recorded = rec.state.get("address")
            addresses = {i.id: await backend.scheduler_address(ctx, i) for i in schedulers}
            schedulers.sort(key=lambda i: (addresses[i.id] != recorded, i.launched_at, i.id))
            extra = schedulers[1:]
            logger.warning("cluster %s: stopping duplicate scheduler(s) %s", rec.name, [i.id for i in extra])
            await backend.stop_instances(ctx, extra)
            self.store.mark_terminated(rec.id, [i.id for i in extra])
            for i in extra:
                known.pop(i.id)
        return schedulers[0] if schedulers else None

    async def _launch_scheduler(self, rec: ClusterRecord, ctx: ClusterContext) -> tuple[ClusterRecord, Instance]:
        self._progress(rec, "scheduler")
        # Counted before the request: a backend can tell a first launch from one after
        # an attempt that may have left something behind (killed, or an answer lost).
        rec = self._update(rec, state={**rec.state, "scheduler_attempts": rec.state.get("scheduler_attempts", 0) + 1})
        ctx.state = dict(rec.state)
        scheduler = await self.backend(rec.backend).launch_scheduler(ctx)
        self.store.add_instances(rec.id, [scheduler])
        rec = self._update(rec, state={**rec.state, "scheduler_launched": time.time()})
        return await self._update_cost(rec), scheduler

    async def _workers_keep_failing(self, rec: ClusterRecord, ctx: ClusterContext, lost: list[Instance]) -> bool:
        """Workers that exit while the cluster starts are relaunched, up to a point: more
        failures than max(3, n_workers) fail the cluster with the last one's log."""
        if not lost or rec.status != State.provisioning:
            return False
        failed = rec.state.get("failed_workers", 0) + len(lost)
        rec = self._update(rec, state={**rec.state, "failed_workers": failed})
        if failed <= max(3, ctx.spec.n_workers):
            return False
        tail = await self._log_tail(ctx, lost[-1].id)
        await self._fail(rec, f"workers keep exiting during start ({failed} so far); last lines:\n{tail}")
        return True

    async def _launch_workers(self, rec: ClusterRecord, ctx: ClusterContext, scheduler: Instance,
                              workers: list[Instance]) -> ClusterRecord:
        """Every missing worker at once, as soon as the scheduler exists (``workers`` grows)."""
        missing = ctx.spec.n_workers - len(workers)
        if missing <= 0:
            return rec
        ctx.instances = [scheduler, *workers]  # the workers join this scheduler, not a duplicate
        new = await self.backend(rec.backend).launch_workers(ctx, missing)
        self.store.add_instances(rec.id, new)
        workers.extend(new)
        rec = await self._update_cost(rec)
        before = rec.state.get("observed", {})
        return self._observe(rec, before.get("ready", 0), len(workers), before.get("lifetime"))

    async def _reach_scheduler(self, rec: ClusterRecord, ctx: ClusterContext,
                               scheduler: Instance) -> tuple[ClusterRecord, Optional[dict[str, Any]]]:
        """The scheduler's identity, with its address and dashboard recorded; None (and
        another pass asked for, or the cluster failed) while it cannot be reached."""
        address = rec.state.get("address") or await self.backend(rec.backend).scheduler_address(ctx, scheduler)
        if address and address != rec.state.get("address"):
            rec = self._update(rec, state={**rec.state, "address": address})
        info = await self.schedulers.identity(rec.id, address) if address else None
        if info is None:
            if address and (why := await self._unreachable(rec, ctx, address)):
                await self._fail(rec, why)
            else:
                self._not_yet(rec, ctx, "scheduler")
            return rec, None
        if not rec.state.get("reached"):  # once reached, a lost connection is not a closed door
            rec = self._update(rec, state={**rec.state, "reached": True})
        dashboard = _dashboard(address, info)
        if dashboard and dashboard != rec.state.get("dashboard"):
            rec = self._update(rec, state={**rec.state, "dashboard": dashboard})
        return rec, info

    async def _retire_extras(self, rec: ClusterRecord, ctx: ClusterContext, workers: list[Instance],
                             connected: set[str]) -> tuple[ClusterRecord, list[Instance]]:
        """More workers than the spec asks: retire the extras gracefully (their data moves to
        the others), newest and not-yet-connected first, then stop their machines."""
        extra = len(workers) - ctx.spec.n_workers
        if extra <= 0:
            return rec, workers
        workers = sorted(workers, key=lambda i: (i.id in connected, -i.launched_at))
        extras, workers = workers[:extra], workers[extra:]
        await self.schedulers.retire(rec.id, rec.state.get("address"), [i.id for i in extras if i.id in connected])
        await self.backend(rec.backend).stop_instances(ctx, extras)
        self.store.mark_terminated(rec.id, [i.id for i in extras])
        return await self._update_cost(rec), workers

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
            self._transition(rec, State.stopped, f"stopped itself: {reason}", target=Target.stopped, stopped_at=time.time())
        else:
            tail = unread or f"last lines:\n{_format_tail([r for r in records if r.role == 'scheduler'])}"
            self._transition(rec, State.error, f"the scheduler exited unexpectedly; {tail}",
                             target=Target.stopped, stopped_at=time.time())

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
        await self.schedulers.forget(rec.id, entirely=True)
        for kept in (self._usage, self._tls_material, self._reach_checked):
            kept.pop(rec.id, None)

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

    def _observe(self, rec: ClusterRecord, ready: int, launched: int, lifetime: Optional[dict]) -> ClusterRecord:
        """Persist what the scheduler reports (so any process can show it); a change in
        worker counts is also a progress event, a change in the lifetime clocks (work, a
        client connecting or leaving, a timeout edited) a ``lifetime`` event carrying the
        new ``time_left``, so the UIs never count down from a stale reading."""
        target = rec.spec["n_workers"]
        clocks = {k: v for k, v in (lifetime or {}).items() if k in CLOCKS}
        observed = {"ready": ready, "launched": launched, "target": target, "lifetime": clocks or None}
        before = rec.state.get("observed", {})
        if observed == before:
            return rec
        rec = self._update(rec, state={**rec.state, "observed": observed})
        if (before.get("ready"), before.get("launched"), before.get("target")) != (ready, launched, target):
            self._progress(rec, "workers", ready=ready, target=target, launched=launched)
        if clocks and clocks != before.get("lifetime"):
            self._publish(Event(rec.id, "lifetime", left(clocks), time.time()))
        return rec

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
                await self._stop(self.store.get_cluster(rec.id), BUDGET)

    def _bookkeeping_failed(self, rec: ClusterRecord, kind: str, what: str, exc: BaseException) -> None:
        """Tell (once per cluster and ``kind``) that some bookkeeping failed and why."""
        logger.warning("cluster %s: %s: %s", rec.name, what, exc, exc_info=exc)
        self.notify(rec.id, notifications.Notice(f"{kind}:failed", kind, "warning",
                                                 f"{what} ({type(exc).__name__}: {exc})"))

    def _usage_of(self, rec: ClusterRecord) -> UsageMirror:
        """The copy of a running cluster's usage samples (:mod:`.usage`)."""
        address = rec.state.get("address")
        if not rec.live or not address:
            raise Conflict(f"cluster {rec.name!r} is {rec.status}; usage is only known while it runs")
        mirror = self._usage.get(rec.id)
        if mirror is None or mirror.address != address:

            async def fetch(since: Optional[float]) -> dict[str, Any]:
                """The watchdog's samples from the scheduler (over the cluster's TLS comms)."""
                try:
                    return await self.schedulers.usage(rec.id, address, since)
                except (OSError, asyncio.TimeoutError) as exc:
                    raise Conflict(f"the scheduler of {rec.name!r} did not answer: {exc}") from None

            mirror = self._usage[rec.id] = UsageMirror(fetch, address)
        return mirror

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

    # -- writing the record: every change of status goes through the state machine --------
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

    def notify(self, cluster_id: str, notice: notifications.Notice) -> None:
        """Record and send a notification, once per situation (its key)."""
        rec = self.store.get_cluster(cluster_id)
        told = rec.state.get("notified", [])
        if notice.key in told:
            return
        data = {"kind": notice.kind, "level": notice.level, "message": notice.message, "key": notice.key}
        self._update(rec, event=("notification", data), state={**rec.state, "notified": [*told, notice.key]})

    def _publish(self, event: Event) -> None:
        self.bus.publish(event)



def _dashboard(address: str, info: dict[str, Any]) -> Optional[str]:
    port = (info.get("services") or {}).get("dashboard")
    if not port:
        return None
    host = address.split("://", 1)[-1].rsplit(":", 1)[0]
    return f"http://{host}:{port}"


def _not_all_synced(spec: Any, boot: Optional[dict[str, Any]]) -> Optional[str]:
    """Why a cluster whose spec asks for every package (``package_sync_strict``, or
    ``package_sync_fail_on: warning-or-higher``) cannot go on: its VMs could not install
    some of them (their boot report says which); None otherwise."""
    if not spec.package_sync or spec.software or not (
            spec.package_sync_strict or spec.package_sync_fail_on == "warning-or-higher"):
        return None
    told = notifications.skipped_packages(boot)
    if not told:
        return None
    field = "package_sync_strict" if spec.package_sync_strict else "package_sync_fail_on"
    return (f"{told[0].message}; {field} asks for every package, so the cluster was stopped: make them installable "
            "on the VMs, leave them out with package_sync_ignore, or use package_sync_fail_on='critical-only'")


def _format_tail(records: list[LogRecord], n: int = 20) -> str:
    return "\n".join(r.format() for r in records[-n:]) or "(no log lines)"
