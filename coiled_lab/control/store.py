"""The store of record: one SQLite file with clusters, their instances and their events.

Like dask-gateway's DataManager, it keeps what *is* (``status``, ``state``: the backend's
resource ids, ``instances``) beside what *should be* (``target``, ``spec``) and holds no
policy. Every write is one transaction, so a process killed mid-write leaves the previous
consistent state (SQLite WAL). The file is created 0600: it may hold cloud resource ids
and, once the server stores them, admin-provided credentials.

Opening it, its backup and its restore are :mod:`.storefile`'s: a store that is damaged,
or missing though it existed, is never opened (nor made again empty) and every use
raises :class:`~coiled_lab.errors.StoreUnavailable` naming the file and the fix.
"""

from __future__ import annotations

import json
import os
import sqlite3
import threading
import time
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Optional

from ..backends.base import Instance
from ..errors import StoreUnavailable
from . import storefile
from .states import FINAL, State, Target

SCHEMA_VERSION = 2  # 2: the prices cache

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS clusters (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    backend TEXT NOT NULL,
    spec TEXT NOT NULL,
    status TEXT NOT NULL,
    target TEXT NOT NULL,
    message TEXT,
    state TEXT NOT NULL DEFAULT '{}',
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL,
    stopped_at REAL
);
CREATE UNIQUE INDEX IF NOT EXISTS clusters_live_name
    ON clusters(name) WHERE status NOT IN ('stopped', 'error');
CREATE TABLE IF NOT EXISTS instances (
    cluster_id TEXT NOT NULL REFERENCES clusters(id) ON DELETE CASCADE,
    id TEXT NOT NULL,
    role TEXT NOT NULL,
    address TEXT,
    vm_type TEXT,
    zone TEXT,
    spot INTEGER NOT NULL DEFAULT 0,
    launched_at REAL NOT NULL,
    terminated_at REAL,
    data TEXT NOT NULL DEFAULT '{}',
    PRIMARY KEY (cluster_id, id)
);
CREATE TABLE IF NOT EXISTS events (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    cluster_id TEXT NOT NULL,
    time REAL NOT NULL,
    kind TEXT NOT NULL,
    data TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS events_by_cluster ON events(cluster_id, seq);
CREATE TABLE IF NOT EXISTS prices (
    key TEXT PRIMARY KEY,
    value TEXT NOT NULL,
    fetched_at REAL NOT NULL
);
"""


class StoreError(RuntimeError):
    pass


class NameInUse(StoreError):
    pass


@dataclass
class ClusterRecord:
    id: str
    name: str
    backend: str
    spec: dict[str, Any]
    status: State
    target: Target
    message: Optional[str]
    state: dict[str, Any]
    created_at: float
    updated_at: float
    stopped_at: Optional[float] = None

    @property
    def live(self) -> bool:
        return self.status not in FINAL

    def to_json(self) -> dict[str, Any]:
        # A shallow dict: asdict() deep-copies spec and state, which dominates a long list.
        d = dict(self.__dict__)
        d["status"], d["target"] = str(self.status), str(self.target)
        return d


class Store:
    """Thread-safe access to the SQLite file (one connection, one lock, short transactions)."""

    def __init__(self, path: str | os.PathLike):
        """Open the store at ``path``; when it cannot be (damaged, not writable), every use
        raises why until :meth:`open` succeeds."""
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        self._lock = threading.RLock()
        self._db: Optional[sqlite3.Connection] = None
        self.problem: Optional[StoreUnavailable] = None  # why it is not open, when it is not
        with suppress(StoreUnavailable):
            self.open()

    def open(self) -> None:
        """Open the file if it is not open: StoreUnavailable (naming it, the cause and the
        fix) when it is damaged, missing though it existed, or cannot be written."""
        with self._lock:
            if self._db is not None:
                return
            try:
                self._db = storefile.connect(self.path)
                self._db.row_factory = sqlite3.Row
                self._migrate()
                storefile.mark(self.path)
            except StoreUnavailable as exc:
                if self._db is not None:
                    self._db.close()
                    self._db = None
                self.problem = exc
                raise
            self.problem = None

    # -- plumbing ---------------------------------------------------------------------
    @contextmanager
    def _use(self) -> Iterator[sqlite3.Connection]:
        """The open connection, under the lock; SQLite's errors about the file (a full disk,
        damage found while running) become StoreUnavailable."""
        with self._lock:
            db = self._connection()
            with storefile.translated(self.path):
                yield db

    def _connection(self) -> sqlite3.Connection:
        """The open connection; StoreUnavailable saying why there is none."""
        if self._db is None:
            problem = self.problem
            raise type(problem)(str(problem)) if problem else StoreUnavailable(f"the store {self.path} is closed")
        return self._db

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        with self._use() as db:
            db.execute("BEGIN IMMEDIATE")
            try:
                yield db
                db.execute("COMMIT")
            except BaseException:
                if db.in_transaction:  # SQLite may have rolled back already (a full disk)
                    db.execute("ROLLBACK")
                raise

    def _migrate(self) -> None:
        with self._use() as db:
            # executescript runs its own transaction; every statement is idempotent.
            db.executescript("BEGIN;" + _SCHEMA + "COMMIT;")
        with self.transaction() as db:
            row = db.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
            if row is None:
                db.execute("INSERT INTO meta VALUES ('schema_version', ?)", (str(SCHEMA_VERSION),))
            elif int(row["value"]) < SCHEMA_VERSION:
                # Every change so far only added tables, which the schema script created.
                db.execute("UPDATE meta SET value = ? WHERE key = 'schema_version'", (str(SCHEMA_VERSION),))
            elif int(row["value"]) > SCHEMA_VERSION:
                raise StoreError(
                    f"{self.path} has schema version {row['value']}, newer than this coiled-lab "
                    f"understands ({SCHEMA_VERSION}); upgrade coiled-lab"
                )

    @property
    def schema_version(self) -> int:
        with self._use() as db:
            row = db.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
        return int(row["value"])

    def backup(self) -> Path:
        """Copy the store, open and so checked, to its backup beside it (see
        :func:`.storefile.backup`); it stays usable meanwhile."""
        self._connection()
        return storefile.backup(self.path)

    def close(self) -> None:
        with self._lock:
            if self._db is not None:
                self._db.close()
                self._db = None

    # -- clusters ---------------------------------------------------------------------
    @staticmethod
    def _cluster(row: sqlite3.Row) -> ClusterRecord:
        return ClusterRecord(
            id=row["id"],
            name=row["name"],
            backend=row["backend"],
            spec=json.loads(row["spec"]),
            status=State(row["status"]),
            target=Target(row["target"]),
            message=row["message"],
            state=json.loads(row["state"]),
            created_at=row["created_at"],
            updated_at=row["updated_at"],
            stopped_at=row["stopped_at"],
        )

    def insert_cluster(self, rec: ClusterRecord, event: Optional[tuple[str, dict]] = None) -> Optional[int]:
        """Insert a new cluster (and its first event) atomically; NameInUse if a live one has
        the name, or if any cluster (live or not) has it as its id: a lookup by id wins
        (:meth:`find_cluster`), so such a name would point at the other cluster."""
        try:
            with self.transaction() as db:
                if db.execute("SELECT 1 FROM clusters WHERE id = ?", (rec.name,)).fetchone():
                    raise NameInUse(f"{rec.name!r} is the id of another cluster; names and ids are looked up alike")
                db.execute(
                    "INSERT INTO clusters VALUES (?,?,?,?,?,?,?,?,?,?,?)",
                    (
                        rec.id, rec.name, rec.backend, json.dumps(rec.spec), str(rec.status), str(rec.target),
                        rec.message, json.dumps(rec.state), rec.created_at, rec.updated_at, rec.stopped_at,
                    ),
                )
                if event:
                    return self._insert_event(db, rec.id, *event)
        except sqlite3.IntegrityError as exc:
            if "name" in str(exc):
                raise NameInUse(f"a live cluster is already named {rec.name!r}") from None
            raise
        return None

    def update_cluster(self, cluster_id: str, event: Optional[tuple[str, dict]] = None, **fields: Any) -> Optional[int]:
        """Update columns of one cluster and append an event, in one transaction.

        Returns the event's sequence number when one was written.
        """
        cols = []
        values: list[Any] = []
        for key, value in fields.items():
            if key in ("spec", "state"):
                value = json.dumps(value)
            elif key in ("status", "target"):
                value = str(value)
            cols.append(f"{key} = ?")
            values.append(value)
        cols.append("updated_at = ?")
        values.append(time.time())
        with self.transaction() as db:
            cur = db.execute(f"UPDATE clusters SET {', '.join(cols)} WHERE id = ?", (*values, cluster_id))
            if cur.rowcount != 1:
                raise KeyError(cluster_id)
            if event:
                return self._insert_event(db, cluster_id, *event)
        return None

    def get_cluster(self, cluster_id: str) -> Optional[ClusterRecord]:
        with self._use() as db:
            row = db.execute("SELECT * FROM clusters WHERE id = ?", (cluster_id,)).fetchone()
        return self._cluster(row) if row else None

    def find_cluster(self, name_or_id: str) -> Optional[ClusterRecord]:
        """By id, else the live cluster with that name, else the newest with that name."""
        with self._use() as db:
            row = db.execute(
                "SELECT * FROM clusters WHERE id = ? OR name = ? "
                "ORDER BY id = ? DESC, status NOT IN ('stopped', 'error') DESC, created_at DESC LIMIT 1",
                (name_or_id, name_or_id, name_or_id),
            ).fetchone()
        return self._cluster(row) if row else None

    def list_clusters(self, live_only: bool = False) -> list[ClusterRecord]:
        query = "SELECT * FROM clusters"
        if live_only:
            query += " WHERE status NOT IN ('stopped', 'error')"
        with self._use() as db:
            rows = db.execute(query + " ORDER BY created_at").fetchall()
        return [self._cluster(r) for r in rows]

    def versions(self, live_only: bool = False) -> list[tuple[str, float, str]]:
        """(id, updated_at, status) of every cluster, oldest first: cheap enough to ask on
        every list request, so that unchanged clusters can be answered from a cache."""
        query = "SELECT id, updated_at, status FROM clusters"
        if live_only:
            query += " WHERE status NOT IN ('stopped', 'error')"
        with self._use() as db:
            return [tuple(r) for r in db.execute(query + " ORDER BY created_at").fetchall()]

    def get_clusters(self, ids: list[str]) -> list[ClusterRecord]:
        out: list[ClusterRecord] = []
        with self._use() as db:
            for start in range(0, len(ids), 500):  # SQLite's limit on bound parameters
                chunk = ids[start:start + 500]
                marks = ",".join("?" * len(chunk))
                out += [self._cluster(r) for r in db.execute(f"SELECT * FROM clusters WHERE id IN ({marks})", chunk)]
        return out

    # -- instances --------------------------------------------------------------------
    @staticmethod
    def _instance(row: sqlite3.Row) -> Instance:
        return Instance(
            id=row["id"], role=row["role"], address=row["address"], vm_type=row["vm_type"],
            zone=row["zone"], spot=bool(row["spot"]), launched_at=row["launched_at"],
            terminated_at=row["terminated_at"], data=json.loads(row["data"]),
        )

    def add_instances(self, cluster_id: str, instances: list[Instance]) -> None:
        with self.transaction() as db:
            db.executemany(
                "INSERT OR REPLACE INTO instances VALUES (?,?,?,?,?,?,?,?,?,?)",
                [
                    (cluster_id, i.id, i.role, i.address, i.vm_type, i.zone, int(i.spot), i.launched_at,
                     i.terminated_at, json.dumps(i.data))
                    for i in instances
                ],
            )

    def mark_terminated(self, cluster_id: str, ids: list[str], when: Optional[float] = None) -> None:
        when = time.time() if when is None else when
        with self.transaction() as db:
            db.executemany(
                "UPDATE instances SET terminated_at = ? WHERE cluster_id = ? AND id = ? AND terminated_at IS NULL",
                [(when, cluster_id, i) for i in ids],
            )

    def instances(self, cluster_id: str, live_only: bool = True) -> list[Instance]:
        query = "SELECT * FROM instances WHERE cluster_id = ?"
        if live_only:
            query += " AND terminated_at IS NULL"
        with self._use() as db:
            rows = db.execute(query + " ORDER BY launched_at, id", (cluster_id,)).fetchall()
        return [self._instance(r) for r in rows]

    # -- prices cache -----------------------------------------------------------------
    def cached_price(self, key: str, max_age: float) -> Optional[dict[str, Any]]:
        with self._use() as db:
            row = db.execute("SELECT value, fetched_at FROM prices WHERE key = ?", (key,)).fetchone()
        if row is None or time.time() - row["fetched_at"] > max_age:
            return None
        return json.loads(row["value"])

    def cache_price(self, key: str, value: dict[str, Any]) -> None:
        with self.transaction() as db:
            db.execute("INSERT OR REPLACE INTO prices VALUES (?, ?, ?)", (key, json.dumps(value), time.time()))

    # -- events -----------------------------------------------------------------------
    @staticmethod
    def _insert_event(db: sqlite3.Connection, cluster_id: str, kind: str, data: dict) -> int:
        cur = db.execute(
            "INSERT INTO events (cluster_id, time, kind, data) VALUES (?,?,?,?)",
            (cluster_id, data.get("time", time.time()), kind, json.dumps(data)),
        )
        return int(cur.lastrowid)

    def last_event(self) -> int:
        """The newest event's sequence number (0 when there is none)."""
        with self._use() as db:
            return int(db.execute("SELECT COALESCE(MAX(seq), 0) FROM events").fetchone()[0])

    def add_event(self, cluster_id: str, kind: str, data: dict) -> int:
        with self.transaction() as db:
            return self._insert_event(db, cluster_id, kind, data)

    def events(self, cluster_id: Optional[str] = None, after: int = 0, limit: int = 1000) -> list[dict[str, Any]]:
        query = "SELECT * FROM events WHERE seq > ?"
        args: list[Any] = [after]
        if cluster_id:
            query += " AND cluster_id = ?"
            args.append(cluster_id)
        with self._use() as db:
            rows = db.execute(query + " ORDER BY seq LIMIT ?", (*args, limit)).fetchall()
        return [
            {"seq": r["seq"], "cluster_id": r["cluster_id"], "time": r["time"], "kind": r["kind"], "data": json.loads(r["data"])}
            for r in rows
        ]
