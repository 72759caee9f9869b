"""The store of record: clusters (and their owners), their instances, their events and the
audit log, in one SQLite file (:class:`Store`) or, in team mode, a PostgreSQL database
(:mod:`.pgstore`); :func:`open_store` opens either, and :class:`SQLStore` holds the queries
both run, so that they mean the same. The schema is :mod:`.migrations`'.

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
from . import migrations, storefile
from .states import FINAL, State, Target

SCHEMA_VERSION = migrations.latest("sqlite")  # 2: the prices cache; 3: owners and the audit log; 4: names per owner

# Where the version lives: made before any step, so that a step can be applied and recorded.
_META = "CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)"


class StoreError(RuntimeError):
    pass


class NameInUse(StoreError):
    pass


LIVE = "status NOT IN ('stopped', 'error')"  # the SQL twin of ClusterRecord.live

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
    owner: str = ""  # who made it, in team mode; '' in a one-user store

    @property
    def live(self) -> bool:
        return self.status not in FINAL

    def to_json(self) -> dict[str, Any]:
        # A shallow dict: asdict() deep-copies spec and state, which dominates a long list.
        d = dict(self.__dict__)
        d["status"], d["target"] = str(self.status), str(self.target)
        return d


# (actor, action, per_hour, detail): the audit row written with a change, in its transaction.
Audit = tuple[str, str, Optional[float], Optional[dict[str, Any]]]

_CLUSTER_COLUMNS = (
    "id, name, backend, spec, status, target, message, state, created_at, updated_at, stopped_at, owner"
)
_INSTANCE_COLUMNS = "cluster_id, id, role, address, vm_type, zone, spot, launched_at, terminated_at, data"


class SQLStore:
    """What the SQLite and the PostgreSQL stores share: every query (written in the SQL both
    speak, with ``?`` placeholders), so that the two keep one meaning. A subclass owns the
    connection: :meth:`_use`, :meth:`transaction`, :meth:`open`, :meth:`close`, and says
    how its database reports an insert's sequence number and a taken name."""

    dialect = ""
    describe = ""  # the store, for messages: its file, or its database's host and name
    problem: Optional[StoreUnavailable] = None  # why it is not open, when it is not

    def _use(self) -> Any:
        raise NotImplementedError

    def transaction(self) -> Any:
        raise NotImplementedError

    def _insert_seq(self, db: Any, sql: str, params: tuple) -> int:
        """Run an INSERT into a table keyed by ``seq`` and return the new row's seq."""
        raise NotImplementedError

    def _name_taken(self, exc: BaseException) -> bool:
        """Whether ``exc`` is the live-name index refusing a row."""
        raise NotImplementedError

    # -- schema -----------------------------------------------------------------------
    def _lock_schema(self, db: Any) -> None:
        """Keep other processes from migrating at the same time (until the transaction ends)."""

    def _migrate(self, upto: Optional[int] = None) -> None:
        """Apply the schema steps above the store's version (up to ``upto``, for tests), in one
        transaction; StoreError when the store is newer than this code."""
        steps = migrations.steps(self.dialect)
        latest = steps[-1][0]
        with self.transaction() as db:
            self._lock_schema(db)
            db.execute(_META)
            row = db.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
            current = int(row["value"]) if row else 0
            if current > latest:
                raise StoreError(
                    f"{self.describe} has schema version {current}, newer than this coiled-lab "
                    f"understands ({latest}); upgrade coiled-lab"
                )
            for version, statements in steps:
                if current < version <= (upto or latest):
                    for statement in statements:
                        db.execute(statement)
                    current = version
            if row is None:
                db.execute("INSERT INTO meta (key, value) VALUES ('schema_version', ?)", (str(current),))
            else:
                db.execute("UPDATE meta SET value = ? WHERE key = 'schema_version'", (str(current),))

    @property
    def schema_version(self) -> int:
        with self._use() as db:
            row = db.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
        return int(row["value"])

    # -- clusters ---------------------------------------------------------------------
    @staticmethod
    def _cluster(row: Any) -> ClusterRecord:
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
            owner=row["owner"],
        )

    def insert_cluster(
        self, rec: ClusterRecord, event: Optional[tuple[str, dict]] = None, audit: Optional[Audit] = None,
    ) -> Optional[int]:
        """Insert a new cluster (with its first event and its audit row) atomically; NameInUse
        if a live one has the name, or if any cluster (live or not) has it as its id: a
        lookup by id wins (:meth:`find_cluster`), so such a name would point at the other
        cluster. Returns the event's sequence number when one was written."""
        try:
            with self.transaction() as db:
                if db.execute("SELECT 1 FROM clusters WHERE id = ?", (rec.name,)).fetchone():
                    raise NameInUse(f"{rec.name!r} is the id of another cluster; names and ids are looked up alike")
                db.execute(
                    f"INSERT INTO clusters ({_CLUSTER_COLUMNS}) VALUES (?,?,?,?,?,?,?,?,?,?,?,?)",
                    (
                        rec.id, rec.name, rec.backend, json.dumps(rec.spec), str(rec.status), str(rec.target),
                        rec.message, json.dumps(rec.state), rec.created_at, rec.updated_at, rec.stopped_at,
                        rec.owner,
                    ),
                )
                if audit:
                    self._insert_audit(db, audit[0], audit[1], rec.id, rec.name, *audit[2:])
                if event:
                    return self._insert_event(db, rec.id, *event)
        except NameInUse:
            raise
        except Exception as exc:
            if self._name_taken(exc):
                raise NameInUse(f"a live cluster is already named {rec.name!r}") from None
            raise
        return None

    def update_cluster(
        self, cluster_id: str, event: Optional[tuple[str, dict]] = None, audit: Optional[Audit] = None,
        **fields: Any,
    ) -> Optional[int]:
        """Update columns of one cluster and append an event and an audit row, in one
        transaction: a change is never recorded unaudited, nor audited unmade.

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
            if audit:
                name = db.execute("SELECT name FROM clusters WHERE id = ?", (cluster_id,)).fetchone()["name"]
                self._insert_audit(db, audit[0], audit[1], cluster_id, name, *audit[2:])
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
                f"ORDER BY id = ? DESC, {LIVE} DESC, created_at DESC LIMIT 1",
                (name_or_id, name_or_id, name_or_id),
            ).fetchone()
        return self._cluster(row) if row else None

    @staticmethod
    def _where(live_only: bool, owner: Optional[str]) -> tuple[str, tuple]:
        """The WHERE clause (and its parameters) of a listing: live ones only, one owner's only."""
        terms, args = [], []
        if live_only:
            terms.append(LIVE)
        if owner is not None:
            terms.append("owner = ?")
            args.append(owner)
        return (" WHERE " + " AND ".join(terms) if terms else ""), tuple(args)

    def list_clusters(self, live_only: bool = False, owner: Optional[str] = None) -> list[ClusterRecord]:
        """Clusters, oldest first: live ones only, ``owner``'s only (None: everyone's)."""
        where, args = self._where(live_only, owner)
        with self._use() as db:
            rows = db.execute(f"SELECT * FROM clusters{where} ORDER BY created_at", args).fetchall()
        return [self._cluster(r) for r in rows]

    def versions(self, live_only: bool = False, owner: Optional[str] = None) -> list[tuple[str, float, str]]:
        """(id, updated_at, status) of every cluster (as :meth:`list_clusters` filters them),
        oldest first: cheap enough to ask on every list request, so that unchanged clusters
        can be answered from a cache."""
        where, args = self._where(live_only, owner)
        with self._use() as db:
            rows = db.execute(f"SELECT id, updated_at, status FROM clusters{where} ORDER BY created_at", args)
            return [(r["id"], r["updated_at"], r["status"]) for r in rows.fetchall()]

    def get_clusters(self, ids: list[str]) -> list[ClusterRecord]:
        out: list[ClusterRecord] = []
        with self._use() as db:
            for start in range(0, len(ids), 500):  # SQLite's limit on bound parameters
                chunk = ids[start:start + 500]
                marks = ",".join("?" * len(chunk))
                rows = db.execute(f"SELECT * FROM clusters WHERE id IN ({marks})", chunk).fetchall()
                out += [self._cluster(r) for r in rows]
        return out

    # -- instances --------------------------------------------------------------------
    @staticmethod
    def _instance(row: Any) -> Instance:
        return Instance(
            id=row["id"], role=row["role"], address=row["address"], vm_type=row["vm_type"],
            zone=row["zone"], spot=bool(row["spot"]), launched_at=row["launched_at"],
            terminated_at=row["terminated_at"], data=json.loads(row["data"]),
        )

    def add_instances(self, cluster_id: str, instances: list[Instance]) -> None:
        """Record instances; one already recorded (by id) is replaced."""
        with self.transaction() as db:
            db.executemany(
                f"INSERT INTO instances ({_INSTANCE_COLUMNS}) VALUES (?,?,?,?,?,?,?,?,?,?) "
                "ON CONFLICT (cluster_id, id) DO UPDATE SET role = excluded.role, address = excluded.address, "
                "vm_type = excluded.vm_type, zone = excluded.zone, spot = excluded.spot, "
                "launched_at = excluded.launched_at, terminated_at = excluded.terminated_at, data = excluded.data",
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
            db.execute(
                "INSERT INTO prices (key, value, fetched_at) VALUES (?, ?, ?) ON CONFLICT (key) "
                "DO UPDATE SET value = excluded.value, fetched_at = excluded.fetched_at",
                (key, json.dumps(value), time.time()),
            )

    # -- events -----------------------------------------------------------------------
    def _insert_event(self, db: Any, cluster_id: str, kind: str, data: dict) -> int:
        return self._insert_seq(
            db, "INSERT INTO events (cluster_id, time, kind, data) VALUES (?,?,?,?)",
            (cluster_id, data.get("time", time.time()), kind, json.dumps(data)),
        )

    def last_event(self) -> int:
        """The newest event's sequence number (0 when there is none)."""
        with self._use() as db:
            return int(db.execute("SELECT COALESCE(MAX(seq), 0) AS seq FROM events").fetchone()["seq"])

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

    # -- audit log --------------------------------------------------------------------
    def _insert_audit(
        self, db: Any, actor: str, action: str, cluster_id: Optional[str], cluster_name: Optional[str],
        per_hour: Optional[float] = None, detail: Optional[dict[str, Any]] = None,
    ) -> int:
        return self._insert_seq(
            db,
            "INSERT INTO audit (time, actor, action, cluster_id, cluster_name, per_hour, detail) "
            "VALUES (?,?,?,?,?,?,?)",
            (time.time(), actor, action, cluster_id, cluster_name, per_hour, json.dumps(detail or {})),
        )

    def add_audit(
        self, actor: str, action: str, cluster_id: Optional[str], cluster_name: Optional[str],
        per_hour: Optional[float] = None, detail: Optional[dict[str, Any]] = None,
    ) -> int:
        """Record who did what to which cluster (and what it cost per hour then); returns the
        row's sequence number. A change to a cluster is better audited with it
        (``audit=`` of :meth:`insert_cluster`, :meth:`update_cluster`)."""
        with self.transaction() as db:
            return self._insert_audit(db, actor, action, cluster_id, cluster_name, per_hour, detail)

    def audit(
        self, after: int = 0, limit: int = 1000, actor: Optional[str] = None, cluster_id: Optional[str] = None,
        since: Optional[float] = None, newest: bool = False,
    ) -> list[dict[str, Any]]:
        """Audit rows after sequence number ``after`` (at ``since`` or later, by ``actor``, about
        ``cluster_id``), oldest first, at most ``limit``: the first ones (page on with the last
        one's seq) or, with ``newest``, the latest ones (what an admin opening the log wants)."""
        query = "SELECT * FROM audit WHERE seq > ?"
        args: list[Any] = [after]
        for column, value in (("actor", actor), ("cluster_id", cluster_id)):
            if value is not None:
                query += f" AND {column} = ?"
                args.append(value)
        if since is not None:
            query += " AND time >= ?"
            args.append(since)
        with self._use() as db:
            order = "DESC" if newest else "ASC"
            rows = db.execute(f"{query} ORDER BY seq {order} LIMIT ?", (*args, limit)).fetchall()
        return [
            {
                "seq": r["seq"], "time": r["time"], "actor": r["actor"], "action": r["action"],
                "cluster_id": r["cluster_id"], "cluster_name": r["cluster_name"], "per_hour": r["per_hour"],
                "detail": json.loads(r["detail"]),
            }
            for r in (reversed(rows) if newest else rows)
        ]


class Store(SQLStore):
    """The SQLite store: thread-safe access to one file (one connection, one lock, short
    transactions)."""

    dialect = "sqlite"

    def __init__(self, path: str | os.PathLike):
        """Open the store at ``path``; when it cannot be (damaged, not writable), every use
        raises why until :meth:`open` succeeds."""
        self.path = Path(path)
        self.describe = str(self.path)
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        self._lock = threading.RLock()
        self._db: Optional[sqlite3.Connection] = None
        self.problem = None
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

    def _insert_seq(self, db: sqlite3.Connection, sql: str, params: tuple) -> int:
        return int(db.execute(sql, params).lastrowid)

    def _name_taken(self, exc: BaseException) -> bool:
        return isinstance(exc, sqlite3.IntegrityError) and "clusters.name" in str(exc)

    def backup(self) -> Path:
        """Copy the store, open and so checked, to its backup beside it (see
        :func:`.storefile.backup`); it stays usable meanwhile."""
        self._connection()
        return storefile.backup(self.path)

    def check_restorable(self) -> None:
        """Raise unless the store is damaged, so that its backup may be put in its place (see
        :func:`.storefile.require_damage`)."""
        storefile.require_damage(self.path)

    def close(self) -> None:
        with self._lock:
            if self._db is not None:
                self._db.close()
                self._db = None


def open_store(where: str | os.PathLike) -> SQLStore:
    """The store at ``where``: a ``postgresql://`` (or ``postgres://``) URL is a PostgreSQL
    database (:mod:`.pgstore`, the ``serve`` extra's); a path, or ``sqlite:///path``
    (``sqlite:////abs/path``), is a SQLite file."""
    text = os.fspath(where)
    if text.startswith(("postgresql://", "postgres://")):
        from .pgstore import PostgresStore  # psycopg is imported only for it

        return PostgresStore(text)
    return Store(text.removeprefix("sqlite:///"))
