"""The store survives damage, and damage is loud (issue 18, item 4).

- A store that existed (its marker is beside it) and is now truncated to 0 bytes, deleted,
  or whose header or pages are damaged is never opened nor made again empty: starting a
  manager raises StoreDamaged naming the file and ``coiled-lab store restore``, the CLI
  says it in one line (exit 3), and the restore puts the backup back (keeping the damaged
  file aside), after which every cluster and event is there again.
- A read-only state dir (a read-only bind mount) or a full disk (a tiny tmpfs) is
  StoreUnavailable naming the file and the fix; nothing in the store is lost, and it is
  usable again once the cause is gone, without a new manager.
- The backup is made when the last one is older than ``store.backup-interval`` and at
  every clean shutdown; a backup that cannot be written (full disk) leaves the previous
  one whole and no temporary file behind.

Mounting needs root (as CI runs); those tests are skipped for other users.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import sqlite3
import subprocess
import time
from pathlib import Path

import dask.config
import pytest

from coiled_lab.control.manager import ClusterManager
from coiled_lab.control.states import State
from coiled_lab.control.store import ClusterRecord
from coiled_lab.errors import StoreDamaged, StoreUnavailable

from .test_cli import cli

STORE = "coiled-lab.sqlite"
as_root = pytest.mark.skipif(os.geteuid() != 0, reason="mounting a tmpfs or a read-only bind needs root")


def populate(state_dir: Path, n: int = 40) -> list[str]:
    """A manager's history of ``n`` stopped clusters with their events, shut down cleanly."""
    async def run() -> list[str]:
        manager = await ClusterManager(state_dir).start()
        ids = []
        for i in range(n):
            now = time.time()
            rec = ClusterRecord(id=f"c{i:011d}", name=f"history-{i}", backend="local", spec={"n_workers": i},
                                status=State.stopped, target="stopped", message=None,
                                state={"cost": {"total": i / 10}}, created_at=now, updated_at=now, stopped_at=now)
            manager.store.insert_cluster(rec, event=("state", {"status": "stopped", "time": now}))
            ids.append(rec.id)
        await manager.close()
        return ids

    return asyncio.run(run())


def clusters_in(path: Path) -> list[str]:
    """The cluster ids a store file holds, read without a manager."""
    db = sqlite3.connect(f"{path.as_uri()}?mode=ro", uri=True)
    try:
        return [r[0] for r in db.execute("SELECT id FROM clusters ORDER BY id")]
    finally:
        db.close()


def start(state_dir: Path) -> ClusterManager:
    manager = ClusterManager(state_dir)
    asyncio.run(manager.start())
    return manager


def damage(state_dir: Path, how: str) -> None:
    store = state_dir / STORE
    if how == "truncated":
        store.write_bytes(b"")
    elif how == "deleted":
        for name in (STORE, f"{STORE}-wal", f"{STORE}-shm"):
            (state_dir / name).unlink(missing_ok=True)
    elif how == "header":
        with open(store, "r+b") as f:
            f.write(os.urandom(100))  # the 100-byte database header
    elif how == "pages":
        assert store.stat().st_size >= 4096 * 5  # the damage below stays inside the file
        with open(store, "r+b") as f:
            f.seek(4096 * 2)
            f.write(b"\xff" * 4096 * 3)  # b-tree pages past the schema's
    else:
        raise ValueError(how)


@pytest.mark.parametrize("how, what", [
    ("truncated", "is empty (0 bytes)"),
    ("deleted", "is missing"),
    ("header", "is not an SQLite database"),
    ("pages", "SQLite"),
])
def test_damaged_store_is_refused_in_one_line_and_restored_from_its_backup(state_dir, how, what):
    ids = populate(state_dir)
    damage(state_dir, how)
    size_before = (state_dir / STORE).stat().st_size if (state_dir / STORE).exists() else None

    with pytest.raises(StoreDamaged) as refused:
        start(state_dir)
    message = str(refused.value)
    assert str(state_dir / STORE) in message and what in message and "coiled-lab store restore" in message
    assert "\n" not in message
    # Not made again empty: the damaged file (or its absence) is as it was.
    assert ((state_dir / STORE).stat().st_size if (state_dir / STORE).exists() else None) == size_before

    listed = cli("list", "--all")
    assert listed.returncode == 3
    assert listed.stderr.count("\n") == 1 and str(state_dir / STORE) in listed.stderr, listed.stderr
    assert "coiled-lab store restore" in listed.stderr

    assert clusters_in(state_dir / f"{STORE}.backup") == ids  # made at the clean shutdown
    restored = cli("store", "restore")
    assert restored.returncode == 0, restored.stderr
    assert restored.stdout.count("\n") == 1 and "restored" in restored.stdout, restored.stdout
    kept = sorted(p.name for p in state_dir.glob(f"{STORE}.damaged-*") if not p.name.endswith(("-wal", "-shm")))
    assert len(kept) == (0 if how == "deleted" else 1), kept

    manager = start(state_dir)
    try:
        assert [c.id for c in manager.store.list_clusters()] == ids
        assert len(manager.store.events(limit=1000)) == len(ids)
    finally:
        asyncio.run(manager.close())
    assert cli("store", "restore").returncode == 3  # a whole store: nothing to restore


def test_damage_without_a_backup_is_told_and_an_empty_start_is_explicit(state_dir):
    populate(state_dir, n=2)
    (state_dir / f"{STORE}.backup").unlink()
    damage(state_dir, "truncated")
    listed = cli("list")
    assert listed.returncode == 3 and "no backup" in listed.stderr and "--empty" in listed.stderr, listed.stderr
    refused = cli("store", "restore")
    assert refused.returncode == 3 and "--empty" in refused.stderr, refused.stderr
    emptied = cli("store", "restore", "--empty")
    assert emptied.returncode == 0 and "empty store" in emptied.stdout, emptied.stderr
    assert cli("list", "--all").returncode == 0


def test_backup_is_kept_fresh_while_running_and_made_at_a_clean_shutdown(state_dir):
    backup = state_dir / f"{STORE}.backup"

    async def run() -> None:
        with dask.config.set({"coiled-lab.store.backup-interval": "1s"}):
            manager = await ClusterManager(state_dir).start()
        for _ in range(50):  # none existed: one is made at once
            if backup.exists():
                break
            await asyncio.sleep(0.1)
        assert backup.exists() and backup.stat().st_mode & 0o777 == 0o600
        assert clusters_in(backup) == []
        now = time.time()
        manager.store.insert_cluster(ClusterRecord(
            id="fresh0000000", name="fresh", backend="local", spec={}, status=State.stopped, target="stopped",
            message=None, state={}, created_at=now, updated_at=now))
        for _ in range(50):  # the next one, a second later, has it
            if clusters_in(backup) == ["fresh0000000"]:
                break
            await asyncio.sleep(0.1)
        assert clusters_in(backup) == ["fresh0000000"]
        manager.store.update_cluster("fresh0000000", message="changed just before the shutdown")
        await manager.close()

    asyncio.run(run())
    db = sqlite3.connect(f"{backup.as_uri()}?mode=ro", uri=True)
    assert db.execute("SELECT message FROM clusters").fetchone() == ("changed just before the shutdown",)
    db.close()
    assert not list(state_dir.glob("*.tmp*"))


def fill(directory: Path) -> Path:
    """Fill the disk holding ``directory`` to its last block; the file that does it."""
    filler = directory / "filler"
    with open(filler, "wb", buffering=0) as f:
        try:
            while True:
                f.write(b"\0" * 4096)
        except OSError:
            pass
    return filler


@pytest.fixture
def mounts():
    """Mount points made by a test, unmounted afterwards whatever happened."""
    made: list[Path] = []
    yield made
    for point in reversed(made):
        subprocess.run(["umount", "-l", str(point)], capture_output=True)


@as_root
def test_read_only_state_dir_is_named_and_the_store_works_again_once_writable(state_dir, mounts):
    ids = populate(state_dir, n=3)
    subprocess.run(["mount", "--bind", str(state_dir), str(state_dir)], check=True)
    mounts.append(state_dir)
    subprocess.run(["mount", "-o", "remount,bind,ro", str(state_dir)], check=True)

    manager = ClusterManager(state_dir)
    with pytest.raises(StoreUnavailable) as refused:
        asyncio.run(manager.start())
    assert not isinstance(refused.value, StoreDamaged)  # whole: nothing to restore
    message = str(refused.value)
    assert str(state_dir / STORE) in message and "writable" in message and "\n" not in message, message
    listed = cli("list")
    assert listed.returncode == 3 and "writable" in listed.stderr and listed.stderr.count("\n") == 1

    subprocess.run(["umount", str(state_dir)], check=True)
    mounts.remove(state_dir)
    asyncio.run(manager.start())  # the same manager, asked again
    try:
        assert [c.id for c in manager.store.list_clusters()] == ids
    finally:
        asyncio.run(manager.close())


@as_root
def test_full_disk_refuses_writes_loudly_keeps_the_backup_and_loses_nothing(state_dir, mounts):
    state_dir.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m,mode=0700", "tmpfs", str(state_dir)], check=True)
    mounts.append(state_dir)
    ids = populate(state_dir, n=5)
    backup = state_dir / f"{STORE}.backup"
    kept = hashlib.sha256(backup.read_bytes()).hexdigest()
    manager = start(state_dir)
    try:
        filler = fill(state_dir)
        with pytest.raises(StoreUnavailable) as refused:
            manager.store.add_event(ids[0], "note", {"text": "x" * 4000})
        message = str(refused.value)
        assert str(state_dir / STORE) in message and "full" in message and "\n" not in message, message

        with pytest.raises(StoreUnavailable, match="full"):
            manager.store.backup()
        assert hashlib.sha256(backup.read_bytes()).hexdigest() == kept  # the previous backup, whole
        assert not [p.name for p in state_dir.iterdir() if ".tmp" in p.name]

        filler.unlink()  # space again: the same store takes writes, nothing was lost
        manager.store.add_event(ids[0], "note", {"after": "space was freed"})
        assert [c.id for c in manager.store.list_clusters()] == ids
        manager.store.backup()
        assert clusters_in(backup) == ids
    finally:
        asyncio.run(manager.close())
    db = sqlite3.connect(state_dir / STORE)
    assert db.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    db.close()
