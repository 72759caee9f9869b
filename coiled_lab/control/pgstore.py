"""The store of record on PostgreSQL: team mode's (``coiled-lab serve --db postgresql://...``).

The SQLite store's queries and meaning (:class:`.store.SQLStore`) on one connection used
under a lock, one transaction per write. What SQLite gets from its file, PostgreSQL gets
from the server: durability, and the lock on managing the store (:class:`AdvisoryLock`, a
session-level advisory lock the server releases when the holder's session ends, however
its process did). Backups are the database's own (the DBA's ``pg_dump`` or replicas):
``backup`` makes none and ``coiled-lab store restore`` refuses.

An unreachable database is retried with growing waits for ``store.connect-timeout``, then
refused in one line naming the host and the fix (StoreUnavailable); once open, a lost
connection fails the call at hand the same way and the next call connects again.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from contextlib import contextmanager, suppress
from typing import Any, Iterator, Optional

from dask.utils import parse_timedelta

from .. import config
from ..errors import ManagerBusy, StoreUnavailable
from .store import SQLStore

try:
    import psycopg
    from psycopg import conninfo
    from psycopg.rows import dict_row
except ImportError:  # the serve extra's
    psycopg = None

logger = logging.getLogger("coiled_lab.manager")

# Advisory lock keys (two int4s: pg_locks shows them as classid, objid with objsubid 2).
_KEY = 0x636C6162  # "clab"
MANAGER, SCHEMA, SEQUENCE = 1, 2, 3

_FIRST_WAIT, _LONGEST_WAIT = 0.5, 10.0  # seconds between attempts to reach the database


def _sql(query: str) -> str:
    """The SQLite store's ``?`` placeholders as psycopg's."""
    return query.replace("%", "%%").replace("?", "%s")


class _Connection:
    """A psycopg connection that takes the SQLite store's SQL: ``?`` placeholders, and
    ``execute``/``executemany`` on the connection itself."""

    def __init__(self, conn: "psycopg.Connection"):
        self.conn = conn

    def execute(self, query: str, params: Any = None) -> "psycopg.Cursor":
        return self.conn.execute(query if params is None else _sql(query), params)

    def executemany(self, query: str, params_seq: Any) -> None:
        with self.conn.cursor() as cur:
            cur.executemany(_sql(query), params_seq)


class PostgresStore(SQLStore):
    """The store in a PostgreSQL database, reached at ``url`` (a libpq URL or conninfo)."""

    dialect = "postgresql"

    def __init__(self, url: str, connect_timeout: Optional[float] = None):
        """Connect to ``url``, once: when that fails, every use raises why until :meth:`open`
        (which keeps trying for ``connect_timeout``, by default ``store.connect-timeout``)
        succeeds."""
        if psycopg is None:
            raise StoreUnavailable(
                "a PostgreSQL store needs the psycopg driver: pip install 'coiled-lab[serve]'"
            )
        self.url = url
        try:
            self.params = conninfo.conninfo_to_dict(url)
        except psycopg.Error:  # its message may quote the password
            raise StoreUnavailable(
                "the store's --db URL is no PostgreSQL URL; write it as "
                "postgresql://user:password@host:port/database"
            ) from None
        self.describe = _describe(self.params)
        self.connect_timeout = float(
            parse_timedelta(config.get("store.connect-timeout")) if connect_timeout is None else connect_timeout
        )
        self._lock = threading.RLock()
        self._conn: Optional[psycopg.Connection] = None
        self._opened = False  # open() succeeded and close() was not called: reconnect when lost
        self.fence: Optional[int] = None  # the backend pid holding the manager lock, when this process does
        self.problem = None
        try:
            self._open_once()
        except StoreUnavailable as exc:
            self.problem = exc

    # -- connecting -------------------------------------------------------------------
    def connect(self, purpose: str) -> "psycopg.Connection":
        """A new autocommit connection, named for ``purpose`` in pg_stat_activity;
        StoreUnavailable naming the host and the fix when the database cannot be reached."""
        params = dict(self.params)
        params.setdefault("connect_timeout", 10)
        params.setdefault("keepalives", 1)  # a dead peer is noticed, and with it a lost lock
        params.setdefault("keepalives_idle", 30)
        params["application_name"] = f"coiled-lab {purpose} (pid {os.getpid()} on {socket.gethostname()})"
        try:
            return psycopg.connect(autocommit=True, row_factory=dict_row, **params)
        except psycopg.Error as exc:
            raise self.unreachable(exc) from None

    def unreachable(self, exc: BaseException) -> StoreUnavailable:
        """StoreUnavailable for a database that cannot be reached (or refuses the login)."""
        cause = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        return StoreUnavailable(
            f"cannot reach the store's database {self.describe}: {cause}; check that PostgreSQL "
            "runs there and that the --db URL (host, port, database, user, password) is right"
        )

    def _open_once(self) -> None:
        with self._lock:
            if self._conn is not None:
                return
            conn = self.connect("store")
            self._conn = conn
            try:
                self._migrate()
            except psycopg.OperationalError as exc:
                self._drop()
                raise self.unreachable(exc) from None
            except psycopg.Error as exc:
                self._drop()
                raise StoreUnavailable(
                    f"the store's database {self.describe} refused coiled-lab's schema: "
                    f"{str(exc).strip().splitlines()[0]}; grant its user CREATE on the database's schema"
                ) from None
            except BaseException:
                self._drop()
                raise
            self._opened = True
            self.problem = None

    def open(self) -> None:
        """Connect if not connected, trying again with growing waits while the database
        cannot be reached, for ``connect_timeout`` seconds; then StoreUnavailable."""
        deadline = time.monotonic() + self.connect_timeout
        wait = _FIRST_WAIT
        while True:
            try:
                self._open_once()
                return
            except StoreUnavailable as exc:
                self.problem = exc
                left = deadline - time.monotonic()
                if left <= 0:
                    raise
                logger.warning("%s; trying again for up to %.0f s", exc, left)
            time.sleep(min(wait, left))
            wait = min(wait * 2, _LONGEST_WAIT)

    def _drop(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def close(self) -> None:
        with self._lock:
            self._opened = False
            self._drop()

    # -- plumbing ---------------------------------------------------------------------
    def _connection(self) -> "psycopg.Connection":
        """The open connection, connecting again (once) if it was lost; StoreUnavailable
        saying why there is none."""
        if self._conn is None or self._conn.closed:
            self._conn = None
            if not self._opened:
                problem = self.problem or StoreUnavailable(f"the store {self.describe} is closed")
                raise type(problem)(str(problem))
            self._conn = self.connect("store")
        return self._conn

    @contextmanager
    def _use(self) -> Iterator[_Connection]:
        with self._lock:
            conn = self._connection()
            try:
                yield _Connection(conn)
            except psycopg.OperationalError as exc:
                if conn.broken or conn.closed:  # the server went away: the next call reconnects
                    self._drop()
                    raise self.unreachable(exc) from None
                raise

    @contextmanager
    def transaction(self) -> Iterator[_Connection]:
        with self._use() as db, db.conn.transaction():
            if self.fence is not None:
                self._check_fence(db)
            yield db

    def _check_fence(self, db: _Connection) -> None:
        """Refuse to write once this process's manager lock is gone (its connection ended):
        another manager may have taken the store meanwhile."""
        held = db.execute(
            "SELECT 1 FROM pg_locks WHERE locktype = 'advisory' AND classid = ? AND objid = ? "
            "AND objsubid = 2 AND pid = ? AND granted",
            (_KEY, MANAGER, self.fence),
        ).fetchone()
        if not held:
            raise ManagerBusy(
                f"this manager lost its lock on {self.describe} (its connection ended) and may "
                "no longer be the one managing it; restart it"
            )

    def _lock_schema(self, db: _Connection) -> None:
        db.execute("SELECT pg_advisory_xact_lock(?, ?)", (_KEY, SCHEMA))

    def _insert_seq(self, db: _Connection, query: str, params: tuple) -> int:
        # Numbers are handed out in commit order, so that a reader paging by seq (a
        # follower's events) never passes one still to be committed.
        db.execute("SELECT pg_advisory_xact_lock(?, ?)", (_KEY, SEQUENCE))
        return int(db.execute(query + " RETURNING seq", params).fetchone()["seq"])

    def _name_taken(self, exc: BaseException) -> bool:
        return isinstance(exc, psycopg.errors.UniqueViolation) and exc.diag.constraint_name == "clusters_live_owner_name"

    # -- what SQLite's file gives ------------------------------------------------------
    def backup(self) -> None:
        """None to make: a PostgreSQL store is backed up by the database's own means."""
        logger.debug("%s is backed up by PostgreSQL's own means (pg_dump, replicas), not coiled-lab", self.describe)

    def check_restorable(self) -> None:
        """Refuse: ``coiled-lab store restore`` puts back a SQLite file's backup."""
        raise StoreUnavailable(
            f"the store is the PostgreSQL database {self.describe}: restore it from that database's "
            "own backups (pg_restore, a replica), not with coiled-lab store restore"
        )

    def leader_lock(self) -> "AdvisoryLock":
        return AdvisoryLock(self)


class AdvisoryLock:
    """The lock on managing a PostgreSQL store: a session-level advisory lock, held on a
    connection of its own by the one manager; the server releases it when that session
    ends, however the process ended, and a follower's next :meth:`take` gets it."""

    def __init__(self, store: PostgresStore):
        self.store = store
        self._conn: Optional[psycopg.Connection] = None  # kept while following, to ask again cheaply
        self._held = False

    def take(self) -> None:
        """Hold the lock, or raise ManagerBusy naming the session that does."""
        if self._held:
            return
        if self._conn is None or self._conn.closed:
            self._conn = self.store.connect("manager")
        conn = self._conn
        try:
            got = conn.execute("SELECT pg_try_advisory_lock(%s, %s) AS got", (_KEY, MANAGER)).fetchone()["got"]
            if not got:
                row = conn.execute(
                    "SELECT a.application_name AS who FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid "
                    "WHERE l.locktype = 'advisory' AND l.classid = %s AND l.objid = %s AND l.objsubid = 2 "
                    "AND l.granted",
                    (_KEY, MANAGER),
                ).fetchone()
        except psycopg.OperationalError as exc:
            self.release()
            raise self.store.unreachable(exc) from None
        if not got:
            who = (row and row["who"]) or "coiled-lab manager"  # its session's application_name
            raise ManagerBusy(
                f"another {who} is using {self.store.describe}; "
                "use it (e.g. through its Jupyter server), or stop it first"
            )
        self._held = True
        self.store.fence = conn.info.backend_pid

    def release(self) -> None:
        """Let the lock go: unlocked at once, so that a follower asking next gets it (the
        server would release it too when the closed session's backend exits, a bit later)."""
        if self._conn is not None:
            if self._held:
                with suppress(psycopg.Error):  # a lost session holds nothing any more
                    self._conn.execute("SELECT pg_advisory_unlock(%s, %s)", (_KEY, MANAGER))
            self._conn.close()
            self._conn = None
        if self._held:
            self._held = False
            self.store.fence = None


def _describe(params: dict[str, Any]) -> str:
    """The database for messages, without its password: postgresql://user@host:port/name."""
    user = f"{params['user']}@" if params.get("user") else ""
    port = f":{params['port']}" if params.get("port") else ""
    return f"postgresql://{user}{params.get('host') or 'localhost'}{port}/{params.get('dbname') or ''}"
