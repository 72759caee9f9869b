"""The scheduler-side watchdog and the notifications the manager derives from it."""

from __future__ import annotations

import asyncio
import time

import dask.config
import pytest
from distributed import Client

from coiled_lab import Cluster
from coiled_lab.bootstrap.watchdog import Watchdog
from coiled_lab.control import notifications
from coiled_lab.control.usage import UsageMirror
from coiled_lab.errors import Conflict

from .conftest import wait_for


def test_shutdown_soon_is_told_before_a_timeout_and_once_per_idle_stretch():
    now = 10_000.0
    clocks = {"started_at": now - 500, "idle_since": now - 1100, "clients": 0, "last_client_at": None,
              "timeouts": {"idle_timeout": 1200, "no_client_timeout": None, "max_lifetime": None}}
    [notice] = notifications.shutdown_soon(clocks, now)
    assert notice.kind == "shutdown-soon" and "stops in 100s" in notice.message and "idle for 20m" in notice.message
    assert notifications.shutdown_soon({**clocks, "idle_since": now - 10}, now) == []  # far from it
    # Keyed by the idle stretch: the same stretch later is the same notice, a new one is not.
    assert notifications.shutdown_soon(clocks, now + 30)[0].key == notice.key
    assert notifications.shutdown_soon({**clocks, "idle_since": now - 1150}, now)[0].key != notice.key


def test_gpu_idle_needs_the_whole_window():
    now = 100_000.0
    busy = [{"time": now - 700 + 5 * i, "per_worker": {"g1": {"gpu": 0}, "g2": {"gpu": 40 if i == 100 else 0}}}
            for i in range(140)]
    [notice] = notifications.gpu_idle(busy, now)
    assert "g1" in notice.message and "g2" not in notice.message
    assert notifications.gpu_idle(busy[-20:], now) == []  # watched for 100 s only
    cpu_only = [{"time": s["time"], "per_worker": {"w": {"cpu": 3.0}}} for s in busy]
    assert notifications.gpu_idle(cpu_only, now) == []


def test_budget():
    assert notifications.budget({"accrued": 7.0}, 10) == []
    assert notifications.budget({"accrued": 8.5}, 10)[0].level == "warning"
    assert notifications.budget({"accrued": 10.2}, 10)[0].level == "error"
    assert notifications.budget({"accrued": 100.0}, None) == []


def test_usage_is_answered_from_the_managers_copy_kept_fresh_by_one_read_at_a_time():
    watchdog = Watchdog(interval=0.2)
    watchdog.samples.extend({"time": t, "workers": 1} for t in (1.0, 2.0))
    asked: list = []

    async def fetch(since):  # the scheduler's handler, with a slow machine's delay
        asked.append(since)
        await asyncio.sleep(0.3)
        return watchdog.usage(since=since)

    async def scenario():
        mirror = UsageMirror(fetch, "tls://10.0.0.1:8786")
        young = await asyncio.gather(*(mirror.get(wait=0.1) for _ in range(20)))  # no copy after 0.1 s
        assert all(u["samples"] == [] and u["as_of"] is None for u in young)
        started = time.perf_counter()
        assert (await mirror.get(wait=0.1))["as_of"] is None  # 0.1 s after the read began: at once
        assert time.perf_counter() - started < 0.05
        first = await asyncio.gather(*(mirror.get(wait=None) for _ in range(20)))  # joining the one read
        assert asked == [None] and all([s["time"] for s in u["samples"]] == [1.0, 2.0] for u in first)
        assert first[0]["interval"] == 0.2 and first[0]["as_of"] <= time.time()
        watchdog.samples.append({"time": 3.0, "workers": 2})
        await asyncio.sleep(0.25)  # older than one interval
        started = time.perf_counter()
        stale = await asyncio.gather(*(mirror.get(since=1.0) for _ in range(20)))
        assert time.perf_counter() - started < 0.1  # answered from the copy, not after the read
        assert all([s["time"] for s in u["samples"]] == [2.0] for u in stale)
        assert asked == [None, 2.0]  # one read under way, for what is newer than the copy
        await mirror.refresh()
        assert [s["time"] for s in (await mirror.get(since=1.0))["samples"]] == [2.0, 3.0]

    async def unanswered():
        down = ["the scheduler of 'x' did not answer"]

        async def flaky(since):
            asked.append(since)
            await asyncio.sleep(0.3)
            if down:
                raise Conflict(down[0])
            return watchdog.usage(since=since)

        asked.clear()
        mirror = UsageMirror(flaky, "tls://10.0.0.1:8786")
        for waited in (True, False):  # the first read is waited for; then callers are told at once
            started = time.perf_counter()
            with pytest.raises(Conflict, match="did not answer"):
                await mirror.get()
            assert (time.perf_counter() - started >= 0.3) is waited
        await asyncio.sleep(0)
        assert asked == [None, None]  # ... and a read retries in the background
        down.clear()
        await mirror.refresh()
        answer = await mirror.get()
        assert answer["error"] is None and [s["time"] for s in answer["samples"]] == [1.0, 2.0, 3.0]
        down.append("the scheduler is gone")
        await asyncio.sleep(0.25)
        with pytest.raises(Conflict):
            await mirror.refresh()
        answer = await mirror.get()  # the copy, and what failed
        assert answer["error"] == "the scheduler is gone" and len(answer["samples"]) == 3

    asyncio.run(scenario())
    asyncio.run(unanswered())


@pytest.mark.slow
def test_watchdog_reports_what_ran_and_metrics_can_be_switched_off(control, state_dir):
    with Cluster(n_workers=1, control=control) as cluster, Client(cluster) as client:
        def inc(x):
            time.sleep(0.01)
            return x + 1

        assert sum(client.gather(client.map(inc, range(20)))) == 210
        usage = wait_for(lambda: (u := control.run(control.usage(cluster.cluster_id)))["samples"] and
                         u["samples"][-1].get("tasks", {}).get("inc", {}).get("done") == 20 and u, timeout=20,
                         what="a sample after the computation")
        last = usage["samples"][-1]
        assert last["tasks"]["inc"]["done"] == 20 and last["tasks"]["inc"]["seconds"] >= 0.2
        assert last["workers"] == 1 and last["clients"] >= 1
        [worker] = last["per_worker"].values()
        assert worker["cpu"] is not None and worker["memory"] > 0 and "gpu" not in worker

    with dask.config.set({"coiled-lab.telemetry.tasks": False, "coiled-lab.telemetry.cpu": False}):
        with Cluster(n_workers=1, control=control) as cluster:
            usage = wait_for(lambda: (u := control.run(control.usage(cluster.cluster_id)))["samples"] and u,
                             timeout=20, what="a sample")
            assert usage["enabled"]["tasks"] is False
            sample = usage["samples"][-1]
            assert "tasks" not in sample and all("cpu" not in w for w in sample["per_worker"].values())


@pytest.mark.slow
def test_idle_shutdown_is_announced_before_it_happens(control, state_dir):
    with dask.config.set({"coiled-lab.notifications.shutdown-warning": "1 minute"}):
        cluster = control.run(control.create({"n_workers": 1, "idle_timeout": 6}))
        control.run(control.wait(cluster["id"], timeout=60))
        final = control.run(control.wait(cluster["id"], ("stopped",), 60))
    assert "idle_timeout" in final["message"]
    told = control.run(control.notifications(cluster["id"]))
    assert [n["kind"] for n in told] == ["shutdown-soon"]
    from coiled_lab.cli import main

    assert main(["notifications", cluster["id"]]) == 0
    assert "stops in" in told[0]["message"] and told[0]["time"] < final["stopped_at"]


@pytest.mark.slow
def test_budget_stops_the_cluster(control, state_dir, monkeypatch):
    from coiled_lab.backends.local import LocalBackend

    async def dear(self, instance, book):
        return 3600.0  # $1 per second

    monkeypatch.setattr(LocalBackend, "instance_price", dear)
    with dask.config.set({"coiled-lab.limits.max-cost-per-cluster": 100, "coiled-lab.manager.cost-interval": 1}):
        cluster = control.run(control.create({"n_workers": 1}))
        final = control.run(control.wait(cluster["id"], ("stopped",), 120))
    kinds = [(n["kind"], n["level"]) for n in control.run(control.notifications(cluster["id"]))]
    assert ("budget", "error") in kinds
    assert final["cost"]["accrued"] >= 100
