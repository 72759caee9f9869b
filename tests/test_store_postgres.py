"""The store on a real PostgreSQL: its migrations, the lock on managing it, a database that
cannot be reached, and a manager that runs local clusters on it (tests/postgres.py starts
the server; the queries' tests run on both backends in test_store.py)."""

from __future__ import annotations

import asyncio
import signal
import time

import psycopg
import pytest

from coiled_lab.control import migrations
from coiled_lab.control.inprocess import InProcessControl
from coiled_lab.control.manager import ClusterManager
from coiled_lab.control.pgstore import AdvisoryLock, PostgresStore
from coiled_lab.control.states import State
from coiled_lab.control.store import SCHEMA_VERSION, NameInUse, StoreError, open_store
from coiled_lab.errors import ManagerBusy, StoreUnavailable

from .conftest import wait_for
from .postgres import free_port
from .test_store import record
from .test_store_safety import ask, manager_process


def test_an_empty_database_gets_the_whole_schema(pg_url):
    store = open_store(pg_url)
    assert isinstance(store, PostgresStore) and store.schema_version == SCHEMA_VERSION
    store.close()
    assert open_store(pg_url).schema_version == SCHEMA_VERSION  # opening again changes nothing
    with psycopg.connect(pg_url) as conn:
        tables = {r[0] for r in conn.execute("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")}
        kinds = dict(conn.execute("SELECT column_name, data_type FROM information_schema.columns "
                                  "WHERE table_name = 'clusters'").fetchall())
    assert tables == {"meta", "clusters", "instances", "events", "prices", "audit"}
    assert kinds["created_at"] == "double precision"  # times keep their sub-second part


def test_a_version_2_database_is_migrated_in_one_step(pg_url):
    with psycopg.connect(pg_url, autocommit=True) as conn:  # the database as version 2 left it
        conn.execute("CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
        for version, statements in migrations.steps("postgresql"):
            if version <= 2:
                for statement in statements:
                    conn.execute(statement)
        conn.execute("INSERT INTO meta VALUES ('schema_version', '2')")
        conn.execute("INSERT INTO clusters VALUES ('c1','old','local','{}','running','running',NULL,'{}',0,0,NULL)")
    store = open_store(pg_url)
    assert store.schema_version == SCHEMA_VERSION == 4
    assert store.get_cluster("c1").owner == "" and [r.id for r in store.list_clusters(owner="")] == ["c1"]
    store.update_cluster("c1", status=State.stopping, audit=("ann", "stop", None, None))
    assert [(r["actor"], r["cluster_name"]) for r in store.audit()] == [("ann", "old")]


def test_a_newer_database_is_refused_naming_both_versions(pg_url):
    open_store(pg_url).close()
    with psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute("UPDATE meta SET value = '999' WHERE key = 'schema_version'")
    newer = f"schema version 999, newer than this coiled-lab understands \\({SCHEMA_VERSION}\\)"
    with pytest.raises(StoreError, match=newer):
        open_store(pg_url)


def test_one_process_holds_the_lock_until_it_lets_go_or_its_session_ends(pg_url):
    first, second = open_store(pg_url), open_store(pg_url)
    held, wanted = AdvisoryLock(first), AdvisoryLock(second)
    held.take()
    with pytest.raises(ManagerBusy, match=r"another coiled-lab manager \(pid \d+ on .*\) "
                                          r"is using postgresql://postgres@127\.0\.0\.1:\d+/t"):
        wanted.take()
    held.release()
    wanted.take()
    second.insert_cluster(record("c1", "one"))  # the holder writes
    assert first.get_cluster("c1").name == "one"  # the other reads

    with psycopg.connect(pg_url, autocommit=True) as conn:  # the holder's session ends (it died, say)
        conn.execute("SELECT pg_terminate_backend(%s)", (second.fence,))

    def taken() -> bool:
        try:
            held.take()
        except ManagerBusy:
            return False
        return True

    wait_for(taken, timeout=10, what="the lock to be free once its session ended")


def test_a_holder_whose_lock_session_ended_writes_nothing_more(pg_url):
    store = open_store(pg_url)
    lock = AdvisoryLock(store)
    lock.take()
    with psycopg.connect(pg_url, autocommit=True) as conn:  # e.g. a DBA, or a proxy's idle timeout
        conn.execute("SELECT pg_terminate_backend(%s)", (store.fence,))
    with pytest.raises(ManagerBusy, match="lost its lock"):
        store.insert_cluster(record("c1", "one"))
    assert store.list_clusters() == []


def test_a_lost_connection_fails_one_call_and_the_next_reconnects(pg_url):
    store = open_store(pg_url)
    store.insert_cluster(record("c1", "one"))
    with psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                      "WHERE application_name LIKE 'coiled-lab store%' AND datname = current_database()")
    with pytest.raises(StoreUnavailable, match="cannot reach the store's database"):
        store.get_cluster("c1")
    assert store.get_cluster("c1").name == "one"


def test_an_unreachable_database_is_retried_then_refused_in_one_line():
    url = f"postgresql://coiled:secret@127.0.0.1:{free_port()}/lab"
    store = PostgresStore(url, connect_timeout=1.5)  # one attempt: its problem is kept for every use
    assert store.problem is not None
    with pytest.raises(StoreUnavailable):
        store.list_clusters()
    started = time.monotonic()
    with pytest.raises(StoreUnavailable) as refused:
        store.open()
    assert 1 <= time.monotonic() - started < 10  # retried for the time asked, not for ever
    message = str(refused.value)
    assert "\n" not in message and "secret" not in message
    assert message.startswith("cannot reach the store's database postgresql://coiled@127.0.0.1:")
    assert "check that PostgreSQL runs there" in message


def test_a_malformed_url_is_refused_without_echoing_it():
    with pytest.raises(StoreUnavailable, match="no PostgreSQL URL; write it as postgresql://") as refused:
        open_store("postgresql://coiled:sec ret@db/lab")  # psycopg would quote "sec ret"
    assert "sec ret" not in str(refused.value)


def test_a_manager_on_an_unreachable_database_refuses_to_start(state_dir):
    manager = ClusterManager(state_dir, db=f"postgresql://postgres@127.0.0.1:{free_port()}/lab")
    manager.store.connect_timeout = 0.5
    with pytest.raises(StoreUnavailable, match="cannot reach the store's database"):
        asyncio.run(manager.start())


def test_backups_and_restores_are_the_databases(pg_url, state_dir):
    manager = ClusterManager(state_dir, db=pg_url)
    assert manager.store.backup() is None
    with pytest.raises(StoreUnavailable, match="restore it from that database's own backups"):
        manager.restore_store()
    assert not (state_dir / "coiled-lab.sqlite").exists()


def test_names_stay_unique_among_live_clusters(pg_url):
    store = open_store(pg_url)
    store.insert_cluster(record("c1", "etl"))
    with pytest.raises(NameInUse, match="already named"):
        store.insert_cluster(record("c2", "etl"))
    with pytest.raises(NameInUse, match="is the id of another cluster"):
        store.insert_cluster(record("c3", "c1"))
    with pytest.raises(psycopg.errors.UniqueViolation):  # an id taken is no name taken
        store.insert_cluster(record("c1", "other"))


@pytest.mark.slow
def test_a_manager_runs_local_clusters_on_postgres(pg_url, state_dir):
    control = InProcessControl(ClusterManager(state_dir, db=pg_url))
    manager = control.manager
    try:
        made = control.run(manager.create({"backend": "local", "name": "pg", "n_workers": 1}))
        assert control.run(manager.wait(made["id"], timeout=60))["status"] == "running"
        control.run(manager.scale(made["id"], 2))
        wait_for(lambda: len(manager.store.instances(made["id"])) == 3, timeout=60, what="two workers")
        control.run(manager.stop(made["id"]))
        assert control.run(manager.wait(made["id"], ("stopped",), timeout=60))["status"] == "stopped"
        seen = [e["data"]["status"] for e in manager.store.events(made["id"]) if e["kind"] == "state"]
        assert seen[0] == "pending" and seen[-1] == "stopped"
    finally:
        control.close()


@pytest.mark.slow
def test_a_second_manager_follows_until_the_first_dies(pg_url, state_dir, monkeypatch):
    monkeypatch.setenv("DASK_COILED_LAB__STORE__DB", pg_url)  # the holder, in another process
    holder = manager_process(state_dir)
    try:
        made = ask(holder, "create", {"backend": "local", "name": "theirs", "n_workers": 0})["ok"]
        other = state_dir.parent / "elsewhere"  # another machine's manager: only the database is shared
        control = InProcessControl(ClusterManager(other, check_interval=0.2, db=pg_url))
        second = control.manager
        try:
            assert not second.owner and f"pid {holder.pid}" in str(second.busy)
            assert [c["name"] for c in control.run(second.list())] == ["theirs"]
            with pytest.raises(ManagerBusy):
                control.run(second.stop("theirs"))
            holder.send_signal(signal.SIGKILL)
            holder.wait()
            wait_for(lambda: second.owner, timeout=30, what="the follower to take over")
            control.run(second.stop(made["id"]))
            assert control.run(second.wait(made["id"], ("stopped",), timeout=60))["status"] == "stopped"
        finally:
            control.close()
    finally:
        if holder.poll() is None:
            holder.kill()
            holder.wait()
