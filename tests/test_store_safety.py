"""Store safety: one manager per store, and a store that survives a writer killed mid-write.

- A second manager on a state dir another process manages is read-only: it lists and
  streams that process's events, refuses every change with ManagerBusy naming the
  holder's pid and writes nothing; once the holder is SIGKILLed it takes over by itself.
- A process looping multi-row transactions (a cluster, its instances and its first event;
  an update with its event; a thousand events at once), SIGKILLed at random moments, leaves
  a store (SQLite, and PostgreSQL) that reopens with every transaction either wholly there
  or wholly absent; a SQLite file's ``integrity_check`` ok and its schema intact.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from contextlib import closing
from pathlib import Path
from typing import Any

import pytest

from coiled_lab.control.manager import ClusterManager
from coiled_lab.control.store import SCHEMA_VERSION, open_store
from coiled_lab.errors import ManagerBusy

from .conftest import wait_for

ROOT = Path(__file__).resolve().parents[1]


def manager_process(state_dir: Path) -> subprocess.Popen:
    """A manager in another process (tests/chaos/manager_process.py), once it holds the store."""
    proc = subprocess.Popen([sys.executable, "-m", "tests.chaos.manager_process", str(state_dir)], cwd=ROOT,
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    assert "ready" in json.loads(proc.stdout.readline())
    return proc


def ask(proc: subprocess.Popen, verb: str, *args) -> dict:
    proc.stdin.write(json.dumps({"verb": verb, "args": list(args)}) + "\n")
    proc.stdin.flush()
    return json.loads(proc.stdout.readline())


def test_a_second_manager_is_read_only_until_the_first_dies(state_dir):
    from coiled_lab.control.inprocess import InProcessControl

    holder = manager_process(state_dir)
    try:
        made = ask(holder, "create", {"backend": "local", "name": "theirs", "n_workers": 0})["ok"]
        refused = ClusterManager(state_dir)
        with pytest.raises(ManagerBusy, match=f"pid {holder.pid}"):
            asyncio.run(refused.start())
        refused.store.close()

        control = InProcessControl(ClusterManager(state_dir, check_interval=0.2))  # starts read-only
        second = control.manager
        try:
            assert not second.owner and f"pid {holder.pid}" in str(second.busy)
            assert [c["name"] for c in control.run(second.list())] == ["theirs"]
            before = second.store.events(limit=100_000)
            for attempt in (second.create({"backend": "local", "name": "mine", "n_workers": 0}),
                            second.scale("theirs", 1), second.stop("theirs"),
                            second.update("theirs", {"idle_timeout": "5 minutes"})):
                with pytest.raises(ManagerBusy, match="another coiled-lab manager"):
                    control.run(attempt)
            assert second.store.events(limit=100_000) == before  # nothing written
            assert [c["name"] for c in control.run(second.list())] == ["theirs"]

            # The holder's events reach the read-only manager's subscribers.
            sub = second.subscribe(made["id"], kinds={"state"})
            assert ask(holder, "stop", made["id"])["ok"]["status"] == "stopping"
            seen: list[str] = []
            while "stopped" not in seen:
                seen.append(control.run(asyncio.wait_for(sub.get(), 30)).data["status"])
            assert seen[-2:] == ["stopping", "stopped"]  # after any of its start
            sub.close()

            holder.send_signal(signal.SIGKILL)
            holder.wait()
            wait_for(lambda: second.owner, timeout=30, what="the read-only manager to take over")
            created = control.run(second.create({"backend": "local", "name": "mine", "n_workers": 0}))
            assert control.run(second.wait(created["id"], timeout=60))["status"] == "running"
            control.run(second.stop(created["id"]))
            assert control.run(second.wait(created["id"], ("stopped",), timeout=60))["status"] == "stopped"
        finally:
            control.close()
    finally:
        if holder.poll() is None:
            holder.kill()
            holder.wait()


WRITER = textwrap.dedent(
    """
    import itertools, random, sys, time
    from coiled_lab.control.store import open_store
    from coiled_lab.control.states import State

    store = open_store(sys.argv[1])
    rng = random.Random(int(sys.argv[2]))
    print("ready", flush=True)
    for n in itertools.count(int(sys.argv[3])):
        cid = f"c{n}"
        now = time.time()
        print("begin", flush=True)  # the test learns where its kill landed
        with store.transaction() as db:  # a cluster, three instances and its first event: all or nothing
            db.execute("INSERT INTO clusters (id, name, backend, spec, status, target, message, state, "
                       "created_at, updated_at, stopped_at) VALUES (?,?,?,?,?,?,?,?,?,?,?)",
                       (cid, f"n{n}", "local", "{}", "pending", "running", None, '{"updates": 0}', now, now, None))
            db.executemany("INSERT INTO instances (cluster_id, id, role, launched_at) VALUES (?,?,?,?)",
                           [(cid, f"i{k}", "worker", now) for k in range(3)])
            store._insert_event(db, cid, "state", {"status": "pending", "updates": 0})
        print("commit", flush=True)
        for k in range(1, rng.randint(2, 6)):  # each update comes with its event, in one transaction
            store.update_cluster(cid, event=("state", {"status": "running", "updates": k}),
                                 status=State.running, state={"updates": k})
        if n % 3 == 0:  # a long transaction, so some kills land inside one
            print("begin", flush=True)
            with store.transaction() as db:
                for k in range(1000):
                    store._insert_event(db, cid, "log", {"line": k, "text": "x" * 200})
                db.execute("UPDATE clusters SET message = 'logged' WHERE id = ?", (cid,))
            print("commit", flush=True)
    """
)


def connect(where: str) -> Any:
    """The store's database as it is, not opened as coiled-lab's: a DB-API connection."""
    if where.startswith("postgresql://"):
        import psycopg

        return psycopg.connect(where, autocommit=True)
    return sqlite3.connect(where)


def check_consistent(where: str) -> int:
    """Every invariant the writer's transactions keep; returns how many clusters there are."""
    db = connect(where)
    mark = "%s" if where.startswith("postgresql://") else "?"
    try:
        if mark == "?":  # the file itself: PostgreSQL's own crash recovery is not this test's
            assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
            assert db.execute("PRAGMA foreign_key_check").fetchall() == []
            tables = {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
            assert {"meta", "clusters", "instances", "events", "prices"} <= tables
        clusters = db.execute("SELECT id, state, message FROM clusters").fetchall()
        for cid, state, message in clusters:
            instances = db.execute(f"SELECT COUNT(*) FROM instances WHERE cluster_id = {mark}", (cid,)).fetchone()[0]
            assert instances == 3, (cid, instances)
            updates = [json.loads(d)["updates"] for (d,) in db.execute(
                f"SELECT data FROM events WHERE cluster_id = {mark} AND kind = 'state' ORDER BY seq", (cid,))]
            assert updates == list(range(json.loads(state)["updates"] + 1)), (cid, updates, state)
            logs = db.execute(f"SELECT COUNT(*) FROM events WHERE cluster_id = {mark} AND kind = 'log'",
                              (cid,)).fetchone()[0]
            assert logs == (1000 if message == "logged" else 0), (cid, logs, message)
        return len(clusters)
    finally:
        db.close()


def test_a_writer_killed_mid_transaction_leaves_a_consistent_store(store_at):
    path = store_at
    rng = random.Random(4242)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    clusters, next_id, inside = 0, 0, 0
    for kill in range(12):
        writer = subprocess.Popen([sys.executable, "-c", WRITER, str(path), str(kill), str(next_id)],
                                  stdout=subprocess.PIPE, text=True, env=env)
        assert writer.stdout.readline().strip() == "ready"
        time.sleep(rng.uniform(0.05, 0.6))  # a random moment of its loop: the point of the test
        writer.send_signal(signal.SIGKILL)
        writer.wait()
        inside += writer.stdout.read().split()[-1:] == ["begin"]
        found = check_consistent(path)
        assert found >= clusters  # committed transactions are never lost
        clusters = found
        with closing(connect(path)) as db:
            next_id = 1 + max([int(r[0][1:]) for r in db.execute("SELECT id FROM clusters")], default=-1)
    assert clusters > 12  # the writer got somewhere between kills
    assert inside >= 3, f"only {inside} of 12 kills landed inside a transaction"
    store = open_store(path)  # and the store opens as coiled-lab's, at its schema version
    try:
        assert store.schema_version == SCHEMA_VERSION
        assert len(store.list_clusters()) == clusters
        wait_for(lambda: store.events(limit=1), what="events readable")
    finally:
        store.close()
