"""Team mode's policy in the manager: owners, per-user and per-group limits, monthly
budgets and the audit log, with alice, bob and an admin asking one real manager on the
local backend (its scheduler processes real), as the service's handlers do."""

from __future__ import annotations

import asyncio
import time
from datetime import datetime, timezone

import dask.config
import pytest

from coiled_lab.control.callers import ADAPTIVE, BUDGET, LOCAL, Caller
from coiled_lab.control.limits import limit, month_start, spent_this_month
from coiled_lab.control.states import State, Target
from coiled_lab.control.store import ClusterRecord
from coiled_lab.errors import ClusterSpecError, Forbidden, LimitExceeded, NotFound, answer

ALICE = Caller("alice")
BOB = Caller("bob")
ADMIN = Caller("root-of-all", admin=True)
SMALL = {"n_workers": 0}


@pytest.fixture
def manager(control):
    """The control's manager, every cluster's estimate $0.50/hour per machine (scheduler
    and workers), each estimate an await that yields (as a cloud's would)."""

    async def estimate(spec):
        await asyncio.sleep(0.01)
        return {"per_hour": 0.5 * (spec.n_workers + 1)}

    control.manager._estimate = estimate
    yield control.manager
    # Closing a manager leaves clusters running (each stops by its own timeouts): stop them.
    live = [c["id"] for c in call(control, control.manager.list(live_only=True))]
    for cluster_id in live:
        call(control, control.manager.stop(cluster_id))
    for cluster_id in live:
        call(control, control.manager.wait(cluster_id, ("stopped", "error"), 30))


def call(control, coro):
    return control.run(coro, 60)


def limits(**entries):
    """``users.alice.max-clusters=2`` spelt ``users__alice__max_clusters=2``."""
    return dask.config.set({"coiled-lab.limits." + k.replace("__", ".").replace("_", "-"): v
                            for k, v in entries.items()})


def test_users_see_and_change_only_their_own_clusters(control, manager):
    mine = call(control, manager.create({**SMALL, "name": "analysis"}, caller=ALICE))
    assert mine["owner"] == "alice"
    for lookup in (mine["id"], "analysis"):
        for verb in (manager.get(lookup, caller=BOB), manager.scale(lookup, 1, caller=BOB),
                     manager.update(lookup, {"n_workers": 1}, caller=BOB), manager.stop(lookup, caller=BOB),
                     manager.logs(lookup, caller=BOB), manager.connection(lookup, caller=BOB),
                     manager.notifications(lookup, caller=BOB), manager.usage(lookup, caller=BOB),
                     manager.wait(lookup, timeout=1, caller=BOB)):
            with pytest.raises(NotFound) as refused:
                call(control, verb)
            # Word for word what a cluster that does not exist gets: nothing about alice's.
            assert str(refused.value) == str(NotFound(lookup))
    assert [c["id"] for c in call(control, manager.list(caller=BOB))] == []
    assert call(control, manager.list_json(caller=BOB)) == "[]"
    theirs = call(control, manager.create(SMALL, caller=BOB))
    assert theirs["name"].startswith("bob-")  # a default name is its owner's, not the service account's
    assert [c["id"] for c in call(control, manager.list(caller=ALICE))] == [mine["id"]]
    assert {c["id"] for c in call(control, manager.list(caller=ADMIN))} == {mine["id"], theirs["id"]}
    assert call(control, manager.get(mine["id"], caller=ADMIN))["owner"] == "alice"
    assert call(control, manager.get(mine["id"]))["id"] == mine["id"]  # one-user mode: LOCAL sees all
    call(control, manager.stop(theirs["id"], caller=ADMIN))  # an admin changes anyone's
    assert call(control, manager.get(theirs["id"], caller=BOB))["target"] == "stopped"


def test_a_name_finds_the_callers_own_cluster(control, manager):
    old = call(control, manager.create({**SMALL, "name": "analysis"}, caller=BOB))
    call(control, manager.stop("analysis", caller=BOB))
    call(control, manager.wait("analysis", ("stopped",), 30, caller=BOB))
    live = call(control, manager.create({**SMALL, "name": "analysis"}, caller=ALICE))
    assert call(control, manager.get("analysis", caller=BOB))["id"] == old["id"]  # not alice's live one
    assert call(control, manager.get("analysis", caller=ALICE))["id"] == live["id"]
    assert call(control, manager.get("analysis", caller=ADMIN))["id"] == live["id"]  # the live one first
    # Live names are unique per owner: bob may have his own live "analysis" beside alice's ...
    bobs = call(control, manager.create({**SMALL, "name": "analysis"}, caller=BOB))
    assert call(control, manager.get("analysis", caller=BOB))["id"] == bobs["id"]
    assert call(control, manager.get("analysis", caller=ALICE))["id"] == live["id"]
    # ... but not two.
    with pytest.raises(ClusterSpecError) as taken:
        call(control, manager.create({**SMALL, "name": "analysis"}, caller=BOB))
    assert taken.value.field == "name" and "alice" not in taken.value.message and live["id"] not in str(taken.value)


def test_an_owner_in_the_request_is_refused_naming_the_field(control, manager):
    with pytest.raises(ClusterSpecError) as refused:
        call(control, manager.create({**SMALL, "owner": "bob"}, caller=ALICE))
    assert refused.value.field == "owner" and answer(refused.value).status == 400
    assert "'alice'" in refused.value.message
    call(control, manager.create({**SMALL, "name": "x"}, caller=ALICE))
    with pytest.raises(ClusterSpecError) as refused:
        call(control, manager.update("x", {"owner": "bob"}, caller=ALICE))
    assert refused.value.field == "owner"
    assert manager.store.list_clusters() and all(r.owner == "alice" for r in manager.store.list_clusters())


def test_events_reach_only_who_may_see_the_cluster(control, manager):
    subs = {who: call(control, _subscribe(manager, who)) for who in (ALICE, BOB, ADMIN)}
    mine = call(control, manager.create(SMALL, caller=ALICE))
    call(control, manager.stop(mine["id"], caller=ALICE))
    call(control, manager.wait(mine["id"], ("stopped",), 30, caller=ALICE))
    got = {who.name: call(control, _drain(sub)) for who, sub in subs.items()}
    assert got["alice"] and {e.cluster_id for e in got["alice"]} == {mine["id"]}
    assert len(got["root-of-all"]) >= len(got["alice"])
    assert got["bob"] == []
    assert manager.events_since(0, caller=BOB) == []
    assert {e["cluster_id"] for e in manager.events_since(0, caller=ALICE)} == {mine["id"]}
    # More than a page of alice's events before bob's: read through, not cut short.
    for n in range(1200):
        manager.store.add_event(mine["id"], "progress", {"step": "workers", "n": n})
    call(control, manager.create({**SMALL, "name": "bobs"}, caller=BOB))
    assert [e["data"].get("name") for e in manager.events_since(0, caller=BOB)][:1] == ["bobs"]


async def _subscribe(manager, caller):
    return manager.subscribe(caller=caller)


async def _drain(sub):
    events = []
    while not sub.queue.empty():
        events.append(sub.queue.get_nowait())
    return events


def test_a_users_max_clusters_refuses_their_third_while_bob_still_creates(control, manager):
    with limits(users__alice__max_clusters=2, max_clusters=10):
        for _ in range(2):
            call(control, manager.create(SMALL, caller=ALICE))
        with pytest.raises(LimitExceeded) as refused:
            call(control, manager.create(SMALL, caller=ALICE))
        assert refused.value.limit == "max-clusters"
        assert "alice has 2 clusters live" in refused.value.message
        assert "coiled-lab.limits.users.alice.max-clusters" in refused.value.message
        call(control, manager.create(SMALL, caller=BOB))
        call(control, manager.create(SMALL, caller=BOB))
        call(control, manager.create(SMALL, caller=BOB))  # bob has no entry: only the global count holds
    with limits(users__alice__max_clusters=10, max_clusters=5):  # the global ceiling counts everybody
        with pytest.raises(LimitExceeded, match=r"5 clusters already live.*limits\.max-clusters\)"):
            call(control, manager.create(SMALL, caller=ALICE))
    with dask.config.set({f"coiled-lab.limits.users.{LOCAL.name}.max-clusters": 1}):
        call(control, manager.create(SMALL, caller=ALICE))  # the service's own user's entry is its own only


def test_concurrent_creates_of_one_user_never_exceed_their_max_clusters(control, manager):
    async def race():
        return await asyncio.gather(*(manager.create(SMALL, caller=ALICE) for _ in range(6)),
                                    manager.create(SMALL, caller=BOB), return_exceptions=True)

    with limits(users__alice__max_clusters=2):
        answers = call(control, race())
    created = [a for a in answers[:6] if isinstance(a, dict)]
    refused = [a for a in answers[:6] if not isinstance(a, dict)]
    assert len(created) == 2 and all(isinstance(e, LimitExceeded) and e.limit == "max-clusters" for e in refused)
    assert isinstance(answers[6], dict)  # bob's create, racing alice's, is in his own count
    assert len(manager.store.list_clusters(live_only=True, owner="alice")) == 2


def test_group_limits_the_most_generous_group_and_a_users_own_entry(control, manager):
    carol = Caller("carol", groups=frozenset({"students"}))
    dave = Caller("dave", groups=frozenset({"students", "staff"}))
    with limits(max_workers=100, groups__students__max_workers=1, groups__staff__max_workers=4,
                users__erin__max_workers=None):
        with pytest.raises(LimitExceeded) as refused:
            call(control, manager.create({"n_workers": 2}, caller=carol))
        assert refused.value.limit == "max-workers"
        assert "coiled-lab.limits.groups.students.max-workers" in refused.value.message
        assert limit("max-workers", dave).value == 4  # the most generous of his groups
        assert limit("max-workers", Caller("erin", groups=frozenset({"students"}))).value is None  # own entry
        assert limit("max-workers", BOB).value == 100  # no entry: the global one
        # A cluster keeps its owner's groups: an admin scaling carol's is held to carol's limits.
        made = call(control, manager.create({"n_workers": 1}, caller=carol))
        with pytest.raises(LimitExceeded, match="groups.students.max-workers"):
            call(control, manager.scale(made["id"], 2, caller=ADMIN))
    with limits(groups__students__allowed_regions=["eu-west-1"], groups__staff__allowed_regions=["us-east-1"]):
        assert sorted(limit("allowed-regions", dave).value) == ["eu-west-1", "us-east-1"]  # lists add up
    with limits(groups__students__max_cost_per_hour=1, groups__staff__max_cost_per_hour=None):
        assert limit("max-cost-per-hour", dave).value is None  # no limit beats any


def test_a_users_total_cost_per_hour_counts_their_own_clusters(control, manager):
    with limits(users__alice__max_total_cost_per_hour=2.0):
        call(control, manager.create({"n_workers": 2}, caller=ALICE))  # $1.50/hour
        with pytest.raises(LimitExceeded, match=r"alice's other clusters are admitted at \$1.50/hour"):
            call(control, manager.create({"n_workers": 1}, caller=ALICE))  # +$1.00
        call(control, manager.create({"n_workers": 3}, caller=BOB))  # $2.00: not alice's count


def test_monthly_budget_counts_what_the_users_clusters_cost_this_month(control, manager):
    now = time.time()
    _spent(manager, "alice", accrued=30.0, created=now - 2, stopped=now - 1)
    _spent(manager, "bob", accrued=300.0, created=now - 2, stopped=now - 1)
    assert spent_this_month(manager.store.list_clusters(owner="alice"), now) == pytest.approx(30.0)
    with limits(users__alice__monthly_budget=31.0):
        with pytest.raises(LimitExceeded) as refused:
            call(control, manager.create({"n_workers": 2}, caller=ALICE))  # $1.50 for its first hour
        assert refused.value.limit == "monthly-budget"
        assert "cost an estimated $30.00 this month" in refused.value.message
        made = call(control, manager.create(SMALL, caller=ALICE))  # $0.50 fits
        with pytest.raises(LimitExceeded, match="monthly-budget"):  # growing it does not
            call(control, manager.scale(made["id"], 2, caller=ALICE))
    with limits(monthly_budget=1000.0):  # the global value is each user's own budget
        call(control, manager.create(SMALL, caller=BOB))
    with limits(monthly_budget=100.0):
        with pytest.raises(LimitExceeded, match=r"bob's clusters cost an estimated \$300"):
            call(control, manager.create(SMALL, caller=BOB))


def test_spent_this_month_counts_a_clusters_share_of_the_month():
    now = datetime(2026, 3, 11, tzinfo=timezone.utc).timestamp()
    start = month_start(now)
    assert start == datetime(2026, 3, 1, tzinfo=timezone.utc).timestamp()
    across = _record("a", accrued=20.0, created=start - 86400, stopped=start + 86400)  # half of it in March
    before = _record("b", accrued=99.0, created=start - 3 * 86400, stopped=start - 86400)
    unknown = _record("c", accrued=None, created=start + 10, stopped=start + 20)
    assert spent_this_month([across, before, unknown], now) == pytest.approx(10.0)


def _record(owner, accrued, created, stopped):
    cost = {"accrued": accrued, "per_hour": 1.0, "currency": "USD", "as_of": stopped}
    return ClusterRecord(id=f"{owner}{int(created)}"[:12], name=f"{owner}-{int(created)}", backend="local",
                         spec={"n_workers": 0}, status=State.stopped, target=Target.stopped, message=None,
                         state={"cost": cost}, created_at=created, updated_at=stopped, stopped_at=stopped,
                         owner=owner)


def _spent(manager, owner, **times):
    manager.store.insert_cluster(_record(owner, **times))


def test_the_audit_log_says_who_did_what_at_what_cost(control, manager):
    made = call(control, manager.create({"n_workers": 1, "name": "audited"}, caller=ALICE))
    call(control, manager.scale("audited", 2, caller=ALICE))
    with limits(users__alice__max_workers=2):
        with pytest.raises(LimitExceeded):
            call(control, manager.scale("audited", 3, caller=ALICE))
        with pytest.raises(LimitExceeded):
            call(control, manager.create({"n_workers": 5, "name": "too-big"}, caller=ALICE))
        with pytest.raises(LimitExceeded):  # the server's own adaptive scaling: judged as alice, refusal not logged
            call(control, manager.scale_adaptively(made["id"], 3))
    call(control, manager.scale_adaptively(made["id"], 1))
    call(control, manager.update("audited", {"idle_timeout": "1 hour"}, caller=ALICE))
    call(control, manager.stop("audited", caller=ADMIN))
    rows = call(control, manager.audit(ADMIN))
    assert [(r["actor"], r["action"]) for r in rows] == [
        ("alice", "create"), ("alice", "scale"), ("alice", "refused"), ("alice", "refused"),
        (ADAPTIVE, "scale"), ("alice", "update"), ("root-of-all", "stop"),
    ]
    create, scale, refused_scale, refused_create, adaptive, update, stop = rows
    assert create["cluster_id"] == made["id"] and create["cluster_name"] == "audited"
    assert create["per_hour"] == 1.0 and create["detail"]["n_workers"] == 1
    assert scale["per_hour"] == 1.5 and scale["detail"] == {"from": 1, "to": 2, "adaptive": None}
    assert refused_scale["detail"]["action"] == "scale" and refused_scale["detail"]["limit"] == "max-workers"
    assert refused_scale["cluster_id"] == made["id"]
    assert refused_create["cluster_id"] is None and refused_create["cluster_name"] == "too-big"
    assert refused_create["detail"]["action"] == "create"
    assert "users.alice.max-workers" in refused_create["detail"]["error"]
    assert adaptive["detail"]["to"] == 1 and adaptive["per_hour"] == 1.0
    assert list(update["detail"]) == ["idle_timeout"]
    assert stop["per_hour"] == 1.0 and stop["time"] >= create["time"]
    # Filters and paging.
    assert [r["action"] for r in call(control, manager.audit(ADMIN, user="root-of-all"))] == ["stop"]
    assert len(call(control, manager.audit(ADMIN, cluster="audited"))) == 6  # all but the refused create
    assert call(control, manager.audit(ADMIN, after=rows[-2]["seq"])) == rows[-1:]
    assert call(control, manager.audit(ADMIN, limit=2)) == rows[:2]
    assert call(control, manager.audit(LOCAL)) == rows  # one-user mode: its own user is the admin


def test_the_audit_log_and_cleanup_are_for_admins_only(control, manager):
    call(control, manager.create(SMALL, caller=ALICE))
    for verb in (manager.audit(ALICE), manager.cleanup(dry_run=True, caller=ALICE)):
        with pytest.raises(Forbidden) as refused:
            call(control, verb)
        assert answer(refused.value).status == 403 and answer(refused.value).code == "forbidden"
        assert "'alice' is not one" in str(refused.value)
    with pytest.raises(NotFound):  # an admin asking about a cluster that is not there
        call(control, manager.audit(ADMIN, cluster="nothing-like-it"))


def test_an_estimate_says_whether_the_callers_limits_refuse_it(control, manager):
    with limits(users__alice__max_workers=2):
        assert call(control, manager.estimate({"n_workers": 1}, caller=ALICE))["refused"] is None
        refused = call(control, manager.estimate({"n_workers": 3}, caller=ALICE))["refused"]
        assert refused["limit"] == "max-workers" and refused["field"] == "n_workers"
        assert call(control, manager.estimate({"n_workers": 3}, caller=BOB))["refused"] is None


def test_a_stop_at_the_clusters_budget_is_audited_and_its_cost_counts_this_month(control, manager, monkeypatch):
    from coiled_lab.backends.local import LocalBackend

    async def dear(self, instance, book):
        return 3600.0  # $1 per second: the cost the store keeps grows for real

    monkeypatch.setattr(LocalBackend, "instance_price", dear)
    manager.cost_interval = 1
    with limits(max_cost_per_cluster=20):
        made = call(control, manager.create(SMALL, caller=ALICE))
        call(control, manager.wait(made["id"], ("stopped",), 120, caller=ALICE))
    stops = [r for r in call(control, manager.audit(ADMIN, cluster=made["id"])) if r["action"] == "stop"]
    assert [r["actor"] for r in stops] == [BUDGET]
    with limits(monthly_budget=15):
        with pytest.raises(LimitExceeded, match="monthly-budget"):
            call(control, manager.create(SMALL, caller=ALICE))
        call(control, manager.create(SMALL, caller=BOB))


def test_the_forms_show_the_asking_users_limits():
    """The new-cluster form (GET /schema) bounds each user by their own limits, naming the
    entry that sets them, as a refusal would."""
    from coiled_lab.control.limits import for_forms
    from coiled_lab.schema import form_schema

    students = Caller("carol", groups=frozenset({"students"}))
    with limits(max_workers=20, users__alice__max_workers=50, groups__students__max_workers=4,
                groups__students__allowed_regions=["eu-west-1"]):
        mine, bobs, carols = (form_schema("aws", for_forms(c))["properties"] for c in (ALICE, BOB, students))
    assert (mine["n_workers"]["maximum"], mine["n_workers"]["x-limit"]) == (50, "coiled-lab.limits.users.alice.max-workers")
    assert (bobs["n_workers"]["maximum"], bobs["n_workers"]["x-limit"]) == (20, "coiled-lab.limits.max-workers")
    assert carols["n_workers"]["maximum"] == 4 and carols["region"]["enum"] == ["eu-west-1"]
    assert "x-limit" not in bobs["region"]  # no region limit for bob: any region the cloud has
