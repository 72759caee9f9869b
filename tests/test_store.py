import os
import sqlite3
import stat
import time

import pytest

from coiled_lab.control.states import InvalidTransition, State, check_transition
from coiled_lab.control.store import SCHEMA_VERSION, ClusterRecord, Instance, NameInUse, Store, StoreError


def record(cid: str, name: str, status: State = State.pending) -> ClusterRecord:
    now = time.time()
    return ClusterRecord(
        id=cid, name=name, backend="local", spec={"n_workers": 2}, status=status, target="running",
        message=None, state={"address": "tls://127.0.0.1:1"}, created_at=now, updated_at=now,
    )


def test_round_trip_and_schema_version(tmp_path):
    store = Store(tmp_path / "s.sqlite")
    seq = store.insert_cluster(record("c1", "one"), event=("state", {"status": "pending"}))
    store.add_instances("c1", [Instance("scheduler", "scheduler", data={"pid": 1}), Instance("w1", "worker")])
    store.update_cluster("c1", event=("state", {"status": "running"}), status=State.running, state={"x": [1]})
    store.mark_terminated("c1", ["w1"])
    store.close()

    again = Store(tmp_path / "s.sqlite")
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


def test_live_names_are_unique_but_reusable_after_stop(tmp_path):
    store = Store(tmp_path / "s.sqlite")
    store.insert_cluster(record("c1", "etl"))
    with pytest.raises(NameInUse):
        store.insert_cluster(record("c2", "etl"))
    assert store.get_cluster("c2") is None
    store.update_cluster("c1", status=State.stopped)
    store.insert_cluster(record("c3", "etl"))
    assert store.find_cluster("etl").id == "c3"  # the live one wins
    assert [r.id for r in store.list_clusters(live_only=True)] == ["c3"]


def test_failed_transaction_leaves_nothing_half_written(tmp_path):
    store = Store(tmp_path / "s.sqlite")
    with pytest.raises(RuntimeError):
        with store.transaction() as db:
            db.execute(
                "INSERT INTO clusters VALUES ('c9','x','local','{}','pending','running',NULL,'{}',0,0,NULL)"
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
