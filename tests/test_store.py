import os
import sqlite3
import stat
import time

import pytest

from coiled_lab.control.states import InvalidTransition, State, check_transition
from coiled_lab.control.store import SCHEMA_VERSION, ClusterRecord, Instance, NameInUse, Store, StoreError, open_store


def record(cid: str, name: str, status: State = State.pending) -> ClusterRecord:
    now = time.time()
    return ClusterRecord(
        id=cid, name=name, backend="local", spec={"n_workers": 2}, status=status, target="running",
        message=None, state={"address": "tls://127.0.0.1:1"}, created_at=now, updated_at=now,
    )


def test_round_trip_and_schema_version(store_at):
    store = open_store(store_at)
    seq = store.insert_cluster(record("c1", "one"), event=("state", {"status": "pending"}))
    store.add_instances("c1", [Instance("scheduler", "scheduler", data={"pid": 1}), Instance("w1", "worker")])
    store.update_cluster("c1", event=("state", {"status": "running"}), status=State.running, state={"x": [1]})
    store.mark_terminated("c1", ["w1"])
    store.close()

    again = open_store(store_at)
    assert again.schema_version == SCHEMA_VERSION
    rec = again.get_cluster("c1")
    assert (rec.name, rec.status, rec.state, rec.spec) == ("one", State.running, {"x": [1]}, {"n_workers": 2})
    assert [i.id for i in again.instances("c1")] == ["scheduler"]
    assert again.instances("c1")[0].data == {"pid": 1}
    assert {i.id for i in again.instances("c1", live_only=False)} == {"scheduler", "w1"}
    events = again.events("c1")
    assert [e["data"]["status"] for e in events] == ["pending", "running"]
    assert events[0]["seq"] == seq and again.events("c1", after=seq)[0]["seq"] > seq
    assert again.find_cluster("one").id == "c1" and again.find_cluster("c1").id == "c1"


def test_files_are_private(tmp_path):
    store = Store(tmp_path / "s.sqlite")
    store.insert_cluster(record("c1", "one"))
    for name in ("s.sqlite", "s.sqlite-wal"):
        mode = stat.S_IMODE(os.stat(tmp_path / name).st_mode)
        assert mode & 0o077 == 0, (name, oct(mode))


def test_live_names_are_unique_but_reusable_after_stop(store_at):
    store = open_store(store_at)
    store.insert_cluster(record("c1", "etl"))
    with pytest.raises(NameInUse):
        store.insert_cluster(record("c2", "etl"))
    assert store.get_cluster("c2") is None
    store.update_cluster("c1", status=State.stopped)
    store.insert_cluster(record("c3", "etl"))
    assert store.find_cluster("etl").id == "c3"  # the live one wins
    assert [r.id for r in store.list_clusters(live_only=True)] == ["c3"]


def test_failed_transaction_leaves_nothing_half_written(store_at):
    store = open_store(store_at)
    with pytest.raises(RuntimeError):
        with store.transaction() as db:
            db.execute(
                "INSERT INTO clusters (id, name, backend, spec, status, target, message, state, created_at, "
                "updated_at) VALUES ('c9','x','local','{}','pending','running',NULL,'{}',0,0)"
            )
            raise RuntimeError("boom")
    assert store.list_clusters() == []
    with pytest.raises(KeyError):
        store.update_cluster("nope", event=("state", {}), status=State.running)
    assert store.events() == []


def test_newer_schema_is_refused(tmp_path):
    Store(tmp_path / "s.sqlite").close()
    db = sqlite3.connect(tmp_path / "s.sqlite")
    db.execute("UPDATE meta SET value = '999' WHERE key = 'schema_version'")
    db.commit()
    db.close()
    with pytest.raises(StoreError, match="newer"):
        Store(tmp_path / "s.sqlite")


@pytest.mark.parametrize(
    "old, new, ok",
    [
        (State.pending, State.provisioning, True),
        (State.provisioning, State.running, True),
        (State.running, State.scaling, True),
        (State.scaling, State.running, True),
        (State.running, State.stopping, True),
        (State.stopping, State.stopped, True),
        (State.provisioning, State.error, True),
        (State.stopped, State.running, False),
        (State.pending, State.running, False),
        (State.stopping, State.running, False),
    ],
)
def test_state_machine(old, new, ok):
    if ok:
        check_transition(old, new)
    else:
        with pytest.raises(InvalidTransition):
            check_transition(old, new)


def test_a_version_1_store_is_upgraded_in_place(tmp_path):
    path = tmp_path / "s.sqlite"
    db = sqlite3.connect(path)
    db.executescript(
        "CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);"
        "INSERT INTO meta VALUES ('schema_version', '1');"
    )
    db.commit()
    db.close()
    store = Store(path)
    assert store.schema_version == SCHEMA_VERSION
    store.cache_price("aws:us-east-1:m6i.large", {"price": 0.096})
    assert store.cached_price("aws:us-east-1:m6i.large", max_age=60) == {"price": 0.096}
    assert store.cached_price("aws:us-east-1:m6i.large", max_age=-1) is None  # expired


def test_owners_filter_listings(store_at):
    store = open_store(store_at)
    store.insert_cluster(ClusterRecord(**{**record("c1", "a").__dict__, "owner": "ann"}))
    store.insert_cluster(ClusterRecord(**{**record("c2", "b").__dict__, "owner": "bob"}))
    store.insert_cluster(record("c3", "c"))  # a one-user store's: no owner
    store.update_cluster("c2", status=State.stopped)
    assert store.get_cluster("c1").owner == "ann" and store.get_cluster("c1").to_json()["owner"] == "ann"
    assert store.get_cluster("c3").owner == ""
    assert [r.id for r in store.list_clusters()] == ["c1", "c2", "c3"]  # None: everyone's
    assert [r.id for r in store.list_clusters(owner="bob")] == ["c2"]
    assert store.list_clusters(live_only=True, owner="bob") == []
    assert [v[0] for v in store.versions(live_only=True)] == ["c1", "c3"]
    assert [v[0] for v in store.versions(owner="ann")] == ["c1"]
    assert [v[0] for v in store.versions(owner="")] == ["c3"]


def test_audit_log(store_at):
    store = open_store(store_at)
    before = time.time()
    store.insert_cluster(record("c1", "etl"), event=("state", {"status": "pending"}),
                         audit=("ann", "create", 0.5, {"n_workers": 2}))
    store.update_cluster("c1", status=State.scaling, audit=("ann", "scale", 0.75, {"n_workers": 3}))
    seq = store.add_audit("bob", "stop", "c1", "etl")
    rows = store.audit()
    assert [(r["actor"], r["action"], r["cluster_id"], r["cluster_name"], r["per_hour"]) for r in rows] == [
        ("ann", "create", "c1", "etl", 0.5), ("ann", "scale", "c1", "etl", 0.75), ("bob", "stop", "c1", "etl", None),
    ]
    assert rows[0]["detail"] == {"n_workers": 2} and rows[2]["detail"] == {}
    assert rows[-1]["seq"] == seq and rows[0]["time"] >= before
    assert set(rows[0]) == {"seq", "time", "actor", "action", "cluster_id", "cluster_name", "per_hour", "detail"}
    assert [r["action"] for r in store.audit(actor="ann")] == ["create", "scale"]
    assert [r["action"] for r in store.audit(after=rows[0]["seq"], limit=1)] == ["scale"]
    # An admin opening the log wants the latest rows, still oldest first.
    assert [r["action"] for r in store.audit(limit=2, newest=True)] == ["scale", "stop"]
    assert [r["action"] for r in store.audit(actor="ann", limit=1, newest=True)] == ["scale"]
    assert store.audit(cluster_id="c2") == [] and store.audit(since=time.time() + 60) == []
    assert len(store.audit(cluster_id="c1", since=before)) == 3


def test_a_change_is_never_unaudited(store_at):
    store = open_store(store_at)
    store.insert_cluster(record("c1", "etl"), audit=("ann", "create", None, None))
    with pytest.raises(NameInUse):  # refused: neither the cluster nor its audit row
        store.insert_cluster(record("c2", "etl"), audit=("bob", "create", None, None))
    with pytest.raises(KeyError):
        store.update_cluster("nope", audit=("bob", "stop", None, None), status=State.stopping)
    assert [(r["actor"], r["cluster_id"]) for r in store.audit()] == [("ann", "c1")]


def test_a_version_2_store_gets_owners_and_the_audit_log(tmp_path):
    path = tmp_path / "s.sqlite"
    store = Store(path)
    store.close()
    db = sqlite3.connect(path)  # back to version 2, as coiled-lab 0.1 made it, with a cluster
    db.executescript(
        "DROP TABLE audit; DROP INDEX clusters_live_owner_name; ALTER TABLE clusters DROP COLUMN owner;"
        "CREATE UNIQUE INDEX clusters_live_name ON clusters(name) WHERE status NOT IN ('stopped', 'error');"
        "UPDATE meta SET value = '2' WHERE key = 'schema_version';"
        "INSERT INTO clusters VALUES ('c1','old','local','{}','running','running',NULL,'{}',0,0,NULL);"
    )
    db.close()
    store = Store(path)
    assert store.schema_version == SCHEMA_VERSION == 4
    assert store.get_cluster("c1").owner == "" and [r.id for r in store.list_clusters(owner="")] == ["c1"]
    store.add_audit("ann", "stop", "c1", "old")
    assert store.audit()[0]["cluster_name"] == "old"
