"""Which process manages a store, and what the one that does owes the others.

One manager per store: it holds the store's :class:`LeaderLock`, released however its
process ends; any other process opens the store read-only and follows it
(:meth:`ClusterManager._follow`), taking over once the lock is free. A SQLite store's lock
is ``manager.lock`` in the state dir (an ``flock``, released by the kernel), a PostgreSQL
store's an advisory lock (:class:`.pgstore.AdvisoryLock`, released by the server when its
session ends). The owner of a SQLite store keeps its backup fresh
(``store.backup-interval``) and makes one more at a clean shutdown; a PostgreSQL store is
backed up by the database's own means.
"""

from __future__ import annotations

import asyncio
import fcntl
import logging
import os
from pathlib import Path
from typing import IO, Optional, Protocol

from ..errors import ManagerBusy, StoreUnavailable
from . import storefile
from .store import SQLStore, Store

logger = logging.getLogger("coiled_lab.manager")

BACKUP_RETRY = 300.0  # seconds before a failed backup is tried again


class LeaderLock(Protocol):
    def take(self) -> None:
        """Hold the lock, or raise ManagerBusy naming who does."""

    def release(self) -> None:
        """Let it go, if held."""


def lock_for(store: SQLStore, state_dir: Path) -> LeaderLock:
    """The lock on managing ``store``: the database's for PostgreSQL, else the state dir's."""
    if store.dialect == "postgresql":
        return store.leader_lock()  # type: ignore[attr-defined]
    return StoreLock(state_dir, store.path)  # type: ignore[attr-defined]


class StoreLock:
    """The state dir's ``manager.lock``: held by the one process that manages the store."""

    def __init__(self, state_dir: Path, store_path: Path):
        self.state_dir = state_dir
        self._store_path = store_path
        self._file: Optional[IO[str]] = None

    def take(self) -> None:
        """Hold the lock, or raise ManagerBusy naming the process that does."""
        path = self.state_dir / "manager.lock"
        with storefile.translated(self._store_path, "(its lock, manager.lock)"):  # a read-only state dir, say
            f = open(path, "a+")
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.seek(0)
            holder = f.read().strip() or "?"
            f.close()
            raise ManagerBusy(
                f"another coiled-lab manager (pid {holder}) is using {self.state_dir}; "
                "use it (e.g. through its Jupyter server), or stop it first"
            ) from None
        f.seek(0)
        f.truncate()
        f.write(str(os.getpid()))
        f.flush()
        self._file = f

    def release(self) -> None:
        if self._file:
            fcntl.flock(self._file, fcntl.LOCK_UN)
            self._file.close()
            self._file = None


async def keep_backup(store: SQLStore, interval: float) -> None:
    """Keep the store's backup at most ``interval`` seconds old while this process owns
    the store (one at once when the last is older); a PostgreSQL store's are the DBA's."""
    if not isinstance(store, Store):
        return
    while True:
        await asyncio.sleep(max(0.0, interval - storefile.backup_age(store.path)))
        if not await back_up(store):
            await asyncio.sleep(min(interval, BACKUP_RETRY))


async def back_up(store: SQLStore) -> bool:
    """Back the store up now; a failure (a full disk) is logged and the previous backup kept."""
    try:
        await asyncio.to_thread(store.backup)
    except StoreUnavailable as exc:
        logger.warning("the store's backup failed, the previous one is kept: %s", exc)
        return False
    return True
