"""The store's file on disk: opening it loudly, its rolling backup, and restoring that backup.

SQLite makes an empty database wherever it is asked to open one. A store deleted or
truncated while the server was stopped would so come back empty and silent: the
clusters' history and costs gone, machines still running but known to nobody. Hence a
marker beside the store (``coiled-lab.sqlite.marker``), written once the store was first
opened whole: while it is there, a missing or empty store is damage, as is a file whose
header is not SQLite's or that fails SQLite's ``quick_check``. Damage and a store that
cannot be written (a full disk, a read-only directory) raise :class:`StoreUnavailable`
with the file, the cause and the fix in one line, which every coiled-lab route answers
as a 503 and the CLI prints.

The backup (``coiled-lab.sqlite.backup``) is a copy made with SQLite's backup API while
the store is in use, checked, then renamed over the previous one, so there is always one
whole backup. Restoring it is explicit (``coiled-lab store restore``), never automatic: a
backup is up to ``store.backup-interval`` old, and a manager started on it would
reconcile toward that older state (start again clusters stopped since, forget ones made
since) without anyone having decided it. The damaged file is kept beside it.
"""

from __future__ import annotations

import errno
import os
import shutil
import sqlite3
import tempfile
import time
from contextlib import closing, contextmanager
from pathlib import Path
from typing import Iterator, Optional

from ..errors import StoreDamaged, StoreUnavailable

HEADER = b"SQLite format 3\x00"  # the first 16 bytes of every SQLite database
MARKER_TEXT = (
    "coiled-lab's store (the .sqlite file beside this one) existed here. While this file is here, a\n"
    "missing or empty store is reported as damage instead of being made again empty; run\n"
    "`coiled-lab store restore` to put its backup back.\n"
)
_SIDE_FILES = ("-wal", "-shm", "-journal")  # SQLite's files beside a database


def marker_path(path: Path) -> Path:
    return path.with_name(path.name + ".marker")


def backup_path(path: Path) -> Path:
    return path.with_name(path.name + ".backup")


def backup_age(path: Path) -> float:
    """Seconds since the store's backup was made (infinite when there is none)."""
    try:
        return time.time() - backup_path(path).stat().st_mtime
    except FileNotFoundError:
        return float("inf")


# == opening ===================================================================================
def connect(path: Path) -> sqlite3.Connection:
    """The store's connection, once the file passed every check; a new store is made only
    where none existed. Raises StoreUnavailable (StoreDamaged for damage)."""
    check_file(path)
    with translated(path):
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)  # 0600 before SQLite makes it; -wal/-shm inherit
        os.close(fd)
        os.chmod(path, 0o600)  # one made by an older version, or copied in by hand
        db = sqlite3.connect(path, check_same_thread=False, isolation_level=None, timeout=30)
    try:
        with translated(path):
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=NORMAL")
            db.execute("PRAGMA foreign_keys=ON")
            check_database(db, path)
    except BaseException:
        db.close()
        raise
    return db


def mark(path: Path) -> None:
    """Say that the store exists (once): from now on its absence is damage."""
    marker = marker_path(path)
    if marker.exists():
        return
    with translated(path):
        fd = os.open(marker, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(MARKER_TEXT)


def check_file(path: Path) -> None:
    """StoreDamaged when the store existed and is now missing or empty, or when the file
    is not an SQLite database."""
    existed = marker_path(path).exists()
    try:
        with open(path, "rb") as f:
            header = f.read(len(HEADER))
    except FileNotFoundError:
        if existed:
            raise damaged(path, "is missing") from None
        return
    except OSError as exc:
        raise unavailable(path, exc) from exc
    if not header:
        if existed:
            raise damaged(path, "is empty (0 bytes)")
        return  # made by a process that stopped before SQLite wrote to it
    if header != HEADER:
        raise damaged(path, "is not an SQLite database (its header is damaged)")


def check_database(db: sqlite3.Connection, path: Path) -> None:
    """StoreDamaged unless SQLite's ``quick_check`` finds the open database whole."""
    with translated(path):
        problem = _quick_check(db)
    if problem:
        raise damaged(path, f"fails SQLite's integrity check ({problem})")


def _quick_check(db: sqlite3.Connection) -> Optional[str]:
    """SQLite's first complaint about an open database; None when it finds it whole."""
    rows = db.execute("PRAGMA quick_check").fetchall()
    return None if [tuple(r) for r in rows] == [("ok",)] else str(rows[0][0])


# == errors ====================================================================================
# SQLite's message for each kind of failure about the file (the same text on every Python).
_DAMAGE = ("database disk image is malformed", "file is not a database")
_FULL = ("database or disk is full",)
_NOT_WRITABLE = ("attempt to write a readonly database", "unable to open database file")
_OTHER = ("disk I/O error", "database is locked")


@contextmanager
def translated(path: Path, doing: str = "") -> Iterator[None]:
    """The OS's and SQLite's errors about the store's file as StoreUnavailable; any other
    error (a constraint, a bug in a query) passes unchanged."""
    try:
        yield
    except OSError as exc:
        raise unavailable(path, exc, doing) from exc
    except sqlite3.DatabaseError as exc:
        if not any(text in str(exc) for text in (*_DAMAGE, *_FULL, *_NOT_WRITABLE, *_OTHER)):
            raise
        raise unavailable(path, exc, doing) from exc


def unavailable(path: Path, exc: BaseException, doing: str = "") -> StoreUnavailable:
    """The one line for a store that cannot be used now: damaged, or whole but not writable
    (``doing``: what failed, when it is not the store's own use)."""
    text = str(exc)
    doing = f" {doing}" if doing else ""
    code = getattr(exc, "errno", None)
    if any(t in text for t in _DAMAGE):
        return damaged(path, f"cannot be read by SQLite ({text})")
    if code == errno.ENOSPC or any(t in text for t in _FULL):
        return StoreUnavailable(f"the coiled-lab store {path} cannot be written{doing}: the disk holding it is "
                                "full; free space on it (what the store holds is kept)")
    if code in (errno.EROFS, errno.EACCES, errno.EPERM) or any(t in text for t in _NOT_WRITABLE):
        return StoreUnavailable(f"the coiled-lab store {path} cannot be written{doing}: {text}; make "
                                f"{path.parent} and the files in it writable by this user (uid {os.getuid()})")
    return StoreUnavailable(f"the coiled-lab store {path} cannot be used{doing}: {text}")


def damaged(path: Path, what: str) -> StoreDamaged:
    """The one line for a store that is damaged: what is wrong, and how to get it back."""
    backup = backup_path(path)
    if backup.exists():
        made = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(backup.stat().st_mtime))
        fix = f"run `coiled-lab store restore` to put back its backup of {made} ({backup})"
    else:
        fix = "it has no backup; `coiled-lab store restore --empty` starts an empty store"
    return StoreDamaged(f"the coiled-lab store {path} {what}; {fix}, the damaged file is kept aside")


# == backup and restore ==========================================================================
def backup(path: Path) -> Path:
    """Copy the store, in use, to its backup: a whole, checked copy, or none (the previous
    backup stays). Raises StoreUnavailable."""
    target = backup_path(path)
    fd, tmp_name = tempfile.mkstemp(prefix=target.name + ".", suffix=".tmp", dir=path.parent)  # 0600
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        with translated(path, "while backing it up"):
            source = sqlite3.connect(f"{path.resolve().as_uri()}?mode=rw", uri=True)  # never makes a store
            with closing(source), closing(sqlite3.connect(tmp)) as copy:
                source.backup(copy)
                copy.execute("PRAGMA journal_mode=DELETE")  # one self-contained file: reading it leaves no -wal
                check_database(copy, path)  # a damaged copy is a damaged store
            _fsync(tmp)
            os.replace(tmp, target)
            _fsync(path.parent)
    finally:
        _remove(tmp)
    return target


def inspect(path: Path) -> Optional[StoreUnavailable]:
    """What is wrong with the store, read without changing it; None when it is whole."""
    try:
        check_file(path)
        if not path.exists():
            return None
        with translated(path):
            db = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True)
            with closing(db):
                check_database(db, path)
    except StoreUnavailable as exc:
        return exc
    return None


def require_damage(path: Path) -> StoreDamaged:
    """What damages the store; StoreUnavailable when nothing does (nothing to restore)."""
    problem = inspect(path)
    if not isinstance(problem, StoreDamaged):
        raise StoreUnavailable(f"the coiled-lab store {path} is not damaged"
                               f"{f' ({problem})' if problem else ''}; there is nothing to restore")
    return problem


def restore(path: Path, empty: bool = False) -> str:
    """Put the backup (or, with ``empty``, nothing) in place of a damaged store; keep the
    damaged file beside it. Only while no manager uses the store (the caller holds its
    lock). Returns what was done, in one line."""
    require_damage(path)
    backup = backup_path(path)
    unusable = None if empty else inspect_backup(backup)
    if unusable:
        raise StoreUnavailable(f"the backup {backup} cannot be restored ({unusable}); "
                               "`coiled-lab store restore --empty` starts an empty store instead")
    aside = path.with_name(f"{path.name}.damaged-{time.strftime('%Y%m%dT%H%M%S')}")
    with translated(path, "while restoring its backup"):
        for suffix in ("", *_SIDE_FILES):
            if Path(f"{path}{suffix}").exists():
                os.replace(f"{path}{suffix}", f"{aside}{suffix}")
        kept = f"the damaged file is kept as {aside}" if aside.exists() else "there was no file to keep"
        if empty:
            marker_path(path).unlink(missing_ok=True)
            return f"coiled-lab starts with an empty store at {path}; {kept}"
        fd, tmp_name = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
        os.close(fd)
        try:
            shutil.copyfile(backup, tmp_name)
            _fsync(Path(tmp_name))
            os.replace(tmp_name, path)
            _fsync(path.parent)
        finally:
            _remove(Path(tmp_name))
    made = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(backup.stat().st_mtime))
    return (f"restored {path} from its backup of {made}; {kept}; clusters started or changed since then are "
            "not in it (`coiled-lab cleanup --dry-run` shows what still runs for clusters it does not know)")


def inspect_backup(backup: Path) -> Optional[str]:
    """Why the backup cannot be restored; None when it is whole."""
    try:
        with open(backup, "rb") as f:
            if f.read(len(HEADER)) != HEADER:
                return "it is not an SQLite database"
        with closing(sqlite3.connect(f"{backup.resolve().as_uri()}?mode=ro", uri=True)) as db:
            problem = _quick_check(db)
    except FileNotFoundError:
        return "there is none"
    except (OSError, sqlite3.Error) as exc:
        return str(exc)
    return f"it fails SQLite's integrity check ({problem})" if problem else None


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _remove(path: Path) -> None:
    for suffix in ("", *_SIDE_FILES):
        Path(f"{path}{suffix}").unlink(missing_ok=True)
