"""What a cluster costs, checked against EC2's own clock: on moto and the EC2 emulator a
cluster runs, scales and stops, and the cost coiled-lab accrued is compared with
Σ(price × run time) computed here from each instance's LaunchTime (as moto reports it) and
the moment its TerminateInstances request passed the proxy. Prices come from the local
Price List endpoint (tests/pricelist.py), so both sides use the same known figures.

Admin limits are refused before any cloud call: the proxy and the Price List endpoint
count every request.
"""

from __future__ import annotations

import datetime
import re
import time
from typing import Any, Optional

import dask.config
import pytest

from coiled_lab.control.limits import LimitExceeded

from ..conftest import wait_for
from ..pricelist import HANG, ON_DEMAND
from .conftest import REGION

pytestmark = pytest.mark.slow

MINIMUM_BILLED_SECONDS = 60  # EC2 Linux: per second, at least one minute
SPEC = {"backend": "aws", "n_workers": 1, "worker_vm_types": ["m6i.xlarge"], "scheduler_vm_type": "m6i.large",
        "spot_policy": "on-demand"}


# -- measuring cost independently of coiled-lab (also used by benchmarks/cost_accuracy.py) --------
def termination_clock(proxy) -> dict[str, float]:
    """Note when each instance's first TerminateInstances request reached the proxy (moto
    terminates it at once). Returns the dict it fills: instance id -> time.time()."""
    seen: dict[str, float] = {}

    def hook(request, forward):
        if request.action == "TerminateInstances":
            now = time.time()
            for key, value in request.params.items():
                if key.startswith("InstanceId."):
                    seen.setdefault(value, now)
        return None

    proxy.add(hook)
    return seen


def _reason_time(item: dict) -> Optional[float]:
    """moto's 'User initiated (YYYY-MM-DD HH:MM:SS UTC)': whole seconds, a fallback only."""
    found = re.search(r"\((\d{4}-\d\d-\d\d \d\d:\d\d:\d\d) UTC\)", item.get("StateTransitionReason") or "")
    if not found:
        return None
    when = datetime.datetime.strptime(found.group(1), "%Y-%m-%d %H:%M:%S").replace(tzinfo=datetime.timezone.utc)
    return when.timestamp()


def measured_cost(ec2, cluster_id: str, terminated: dict[str, float], now: Optional[float] = None) -> dict[str, Any]:
    """Σ(on-demand price × billed seconds) over every instance EC2 ever ran for the cluster,
    from moto's DescribeInstances and the observed terminations."""
    now = time.time() if now is None else now
    reservations = ec2.describe_instances(
        Filters=[{"Name": "tag:coiled-lab:cluster", "Values": [cluster_id]}])["Reservations"]
    rows = []
    total = 0.0
    for item in (i for r in reservations for i in r["Instances"]):
        price = ON_DEMAND[(REGION, item["InstanceType"])]
        start = item["LaunchTime"].timestamp()
        end = terminated.get(item["InstanceId"])
        if end is None and item["State"]["Name"] in ("shutting-down", "terminated"):
            end = _reason_time(item)
        seconds = (end if end is not None else now) - start
        billed = max(MINIMUM_BILLED_SECONDS, seconds)
        total += price * billed / 3600
        rows.append({"id": item["InstanceId"], "type": item["InstanceType"], "price": price, "seconds": seconds,
                     "billed": billed, "state": item["State"]["Name"]})
    return {"cost": total, "instances": rows}


# -- the tests ------------------------------------------------------------------------------
async def _subscribe(manager):
    return manager.subscribe(None, {"cost"})


async def _drain(sub) -> list:
    events = []
    while not sub.queue.empty():
        event = sub.queue.get_nowait()
        if event is not None:
            events.append(event)
    sub.close()
    return events


def test_accrued_cost_matches_ec2_run_times(aws_control, emulator, proxy, moto):
    terminated = termination_clock(proxy)
    sub = aws_control.run(_subscribe(aws_control.manager))
    # Before anything ran, the estimate already asks the Price List API (not the snapshot).
    estimate = aws_control.run(aws_control.estimate(SPEC))
    assert estimate["source"] == "AWS Price List API" and estimate["scheduler"] == ON_DEMAND[(REGION, "m6i.large")]
    cluster = aws_control.run(aws_control.create(SPEC))
    cid = cluster["id"]
    aws_control.run(aws_control.wait(cid, timeout=120))
    started = time.time()

    aws_control.run(aws_control.scale(cid, 2))
    aws_control.run(aws_control.wait(cid, timeout=90))
    wait_for(lambda: len(moto.instances(cid, "worker")) == 2, what="2 worker instances")
    aws_control.run(aws_control.scale(cid, 1))
    wait_for(lambda: len(moto.instances(cid, "worker")) == 1, timeout=60, what="1 worker instance")
    # Live: the cost grows at the cluster's $/hour (scheduler + one worker), once the
    # manager has recorded the termination that moto already shows.
    per_hour = ON_DEMAND[(REGION, "m6i.large")] + ON_DEMAND[(REGION, "m6i.xlarge")]
    wait_for(lambda: aws_control.run(aws_control.get(cid))["cost"]["per_hour"] == pytest.approx(per_hour),
             timeout=30, what="the cost of the scheduler and one worker")
    # Let the scheduler and the first worker run past the 60 s minimum, so that their real
    # run time, not the minimum, is what is compared.
    time.sleep(max(0.0, 62 - (time.time() - started)))

    aws_control.run(aws_control.stop(cid))
    final = aws_control.run(aws_control.wait(cid, ("stopped",), 60))
    wait_for(lambda: not moto.tagged(cid), timeout=30, what=f"nothing tagged with {cid}")

    cost = final["cost"]
    measured = measured_cost(moto.client("ec2"), cid, terminated)
    assert len(measured["instances"]) == 3  # scheduler, first worker, the one scaled away
    assert all(r["id"] in terminated for r in measured["instances"])
    assert any(r["seconds"] > MINIMUM_BILLED_SECONDS for r in measured["instances"])
    assert cost["per_hour"] == 0
    assert abs(cost["accrued"] - measured["cost"]) <= 0.01 * measured["cost"], (cost, measured)

    # Sent live on the events stream, the last one being the final figure.
    events = [e for e in aws_control.run(_drain(sub)) if e.cluster_id == cid]
    assert len(events) >= 3  # at least: scheduler launched, workers launched, teardown
    assert events[-1].data == cost
    assert [e.data["accrued"] for e in events] == sorted(e.data["accrued"] for e in events)

    # Kept after the stop (not extrapolated any more) and listed with the cluster.
    time.sleep(1)
    assert aws_control.run(aws_control.get(cid))["cost"] == cost
    listed = {c["id"]: c for c in aws_control.run(aws_control.list())}
    assert listed[cid]["cost"] == cost


WRITES = re.compile(r"^(Create|Run|Terminate|Delete|Put|Request|Modify|Associate|Attach|Start|Authorize)")


@pytest.mark.parametrize("limits, field, limit", [
    ({"max-workers": 2}, {"n_workers": 3}, "max-workers"),
    ({"allowed-instance-types": ["m6i.large", "t3.*"]}, {}, "allowed-instance-types"),
    ({"max-cost-per-hour": 0.2}, {"n_workers": 2}, "max-cost-per-hour"),
])
def test_limits_refuse_before_any_cloud_call(aws_control, proxy, price_list, limits, field, limit):
    spec = {**SPEC, **field}
    before, prices_before = len(proxy.requests), len(price_list.requests)
    with dask.config.set({"coiled-lab.limits": limits}):
        with pytest.raises(LimitExceeded) as info:
            aws_control.run(aws_control.create(spec))
    assert info.value.limit == limit and f"coiled-lab.limits.{limit}" in str(info.value)
    assert aws_control.run(aws_control.list()) == []
    made = [f"{r.service}:{r.action}" for r in proxy.requests[before:]]
    priced = price_list.requests[prices_before:]
    if limit != "max-cost-per-hour":
        assert made == [] and priced == []
        return
    # The $/hour limit needs the estimate: read-only price and catalog look-ups, nothing
    # that launches, creates or changes anything.
    assert not [m for m in made if WRITES.match(m.split(":", 1)[1])], made
    # Once those answers are cached, a refusal makes no request at all.
    before, prices_before = len(proxy.requests), len(price_list.requests)
    with dask.config.set({"coiled-lab.limits": limits}):
        with pytest.raises(LimitExceeded, match="max-cost-per-hour"):
            aws_control.run(aws_control.create(spec))
    assert [f"{r.service}:{r.action}" for r in proxy.requests[before:]] == []
    assert price_list.requests[prices_before:] == []


@pytest.fixture
def quick_bookkeeping():
    """Cost updates every 2 s and price look-ups given 2 s (set before the manager is made)."""
    with dask.config.set({"coiled-lab.manager.cost-interval": 2, "coiled-lab.pricing.timeout": 2}):
        yield


def _notified(control, cid: str, kind: str) -> Optional[dict]:
    return next((n for n in control.run(control.notifications(cid)) if n["kind"] == kind), None)


def test_bookkeeping_failures_are_told_and_never_end_the_cluster(quick_bookkeeping, aws_control, emulator, proxy,
                                                                 price_list, moto):
    """One cluster meets, in turn, every failure that is not its machines': prices (the Price
    List API answers 500, spot prices cannot be read), usage samples and notifications (the
    scheduler answers errors, malformed clocks), log reads. Each is told once as a notification,
    the cost shows as unknown while a price is, and the cluster runs on until its scheduler's
    machine really goes; then it ends with a message although its logs cannot be read."""
    price_list.status = 500  # as moto answers for the Price List API
    spot_history = proxy.fail("DescribeSpotPriceHistory", "server-error", times=10**6)
    try:
        cluster = aws_control.run(aws_control.create({**SPEC, "spot_policy": "spot"}))
        cid = cluster["id"]
        running = aws_control.run(aws_control.wait(cid, timeout=150))
        assert running["status"] == "running", running["message"]
        assert spot_history[0] > 0
        cost = aws_control.run(aws_control.get(cid))["cost"]
        assert cost["accrued"] is None and cost["per_hour"] is None and cost["unknown"]
        told = _notified(aws_control, cid, "cost")
        assert told and told["message"].startswith("the cost of this cluster is unknown"), told

        from distributed import Client

        from coiled_lab import Cluster

        with Cluster(name=cluster["name"], control=aws_control, shutdown_on_close=False) as attached, \
                Client(attached) as client:
            def break_watchdog(dask_scheduler):
                def failing(**kwargs):
                    raise RuntimeError("the watchdog's samples are corrupt")

                def malformed(**kwargs):
                    return {"timeouts": None, "started_at": "yesterday", "clients": 1}

                dask_scheduler.handlers["coiled_lab_usage"] = failing
                dask_scheduler.handlers["coiled_lab_lifetime"] = malformed

            client.run_on_scheduler(break_watchdog)
            told = wait_for(lambda: _notified(aws_control, cid, "notifications"), timeout=30,
                            what="a notification that notifications could not be worked out")
            assert "AttributeError" in told["message"] or "TypeError" in told["message"], told
            record = aws_control.run(aws_control.get(cid))
            assert record["status"] == "running" and record["time_left"] is None  # unknown, listed all the same
            told = wait_for(lambda: _notified(aws_control, cid, "usage"), timeout=60,
                            what="a notification that usage samples could not be read")
            assert "corrupt" in told["message"]
            assert client.submit(lambda x: x + 1, 1).result() == 2  # the cluster works throughout

        # Prices come back: so does the cost, computed from the instances' real run times.
        price_list.reset()
        proxy.reset()
        known = wait_for(lambda: (c := aws_control.run(aws_control.get(cid))["cost"])["accrued"] is not None and c,
                         timeout=60, what="a known cost again")
        assert known["per_hour"] > 0 and "unknown" not in known

        # Logs cannot be read, then the scheduler's machine goes: the cluster ends, saying so.
        proxy.fail("FilterLogEvents", "server-error", times=10**6)
        proxy.fail("GetConsoleOutput", "server-error", times=10**6)
        scheduler = moto.instances(cid, "scheduler")[0]["InstanceId"]
        moto.client("ec2").terminate_instances(InstanceIds=[scheduler])
        final = aws_control.run(aws_control.wait(cid, ("stopped",), 120))
        assert final["status"] == "error" and "its logs could not be read" in final["message"], final["message"]
        wait_for(lambda: not moto.tagged(cid).get("instances"), timeout=60, what="no instance left")
        kinds = [n["kind"] for n in aws_control.run(aws_control.notifications(cid))]
        assert all(kinds.count(k) == 1 for k in ("cost", "usage", "notifications")), kinds  # each told once
    finally:
        price_list.reset()


@pytest.mark.parametrize("fault", ["500", "hang"])
def test_estimate_answers_in_time_when_the_price_list_fails(network, price_list, state_dir, fault):
    """EC2 answers (moto), the Price List API answers 500 (as moto does for it) or holds the
    request: the estimate is the snapshot's prices for the types EC2 confirmed, within 10 s."""
    from coiled_lab import price_snapshot
    from coiled_lab.control.inprocess import InProcessControl
    from coiled_lab.control.manager import ClusterManager

    if fault == "500":
        price_list.status = 500
    else:
        price_list.delay = HANG
    control = InProcessControl(ClusterManager(state_dir))
    try:
        started = time.monotonic()
        est = control.run(control.estimate({**SPEC, "n_workers": 10}))
        assert time.monotonic() - started < 10
        # Dated by its oldest figure: the root disks' (moto's images have "standard" volumes).
        oldest = min(price_snapshot.as_of("aws"), price_snapshot.aws_ebs(REGION, "standard")[1])
        assert est["source"] == f"snapshot: prices as of {oldest}, not live" and est["as_of"] == oldest
        assert est["worker_each"] == price_snapshot.aws_on_demand(REGION, "m6i.xlarge")[0]
        assert not any("instance catalog" in n for n in est["notes"])  # sizes and disks were EC2's own
        assert est["storage"] > 0
        assert price_list.requests
    finally:
        control.close()
        price_list.reset()
