"""A real PostgreSQL for the store's tests: Debian's server, started once per session in a
temp dir (as the ``postgres`` user when run as root: it refuses to run as root), bound to
127.0.0.1 on a free port; each test gets a database of its own.

Fixtures (import the ones a module uses from here):
- ``postgres``: the running server (session);
- ``pg_url``: a fresh, empty database's URL;
- ``store_at``: a fresh store's location, once per backend (a SQLite path, a PostgreSQL URL);
- ``store_on_postgres`` (autouse where imported, as by conftest): with env
  ``COILED_LAB_TEST_STORE=postgresql``, every manager of a test uses a fresh PostgreSQL
  store (``store.db``), so any test module can be run on PostgreSQL.
"""

from __future__ import annotations

import glob
import itertools
import os
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path
from typing import Iterator, Optional

import dask.config
import pytest



def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def postgres_bin() -> Path:
    """The server's programs (``initdb``, ``pg_ctl``): Debian's, installed with apt-get when
    missing, as on a clean CI machine."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    if not found:
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        subprocess.run(["apt-get", "update"], check=True, env=env, capture_output=True)
        subprocess.run(["apt-get", "install", "-y", "postgresql"], check=True, env=env, capture_output=True)
        found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    return Path(found[-1]).parent


class Postgres:
    """One server in a temp dir; :meth:`database` makes a database on it."""

    def __init__(self) -> None:
        self.bin = postgres_bin()
        self.as_postgres = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
        # Not under pytest's tmp dirs: they are 0700 root's, and the server runs as postgres.
        self.root = Path(tempfile.mkdtemp(prefix="coiled-lab-pg-"))
        if self.as_postgres:
            shutil.chown(self.root, "postgres", "postgres")
        self.data = self.root / "data"
        self.port = free_port()
        self.host = "127.0.0.1"
        self._names = itertools.count()

    def _run(self, *args: str) -> None:
        proc = subprocess.run([*self.as_postgres, *args], capture_output=True, text=True)
        if proc.returncode:
            raise RuntimeError(f"{' '.join(args)} failed ({proc.returncode}): {proc.stdout}{proc.stderr}")

    def start(self) -> "Postgres":
        self._run(str(self.bin / "initdb"), "-D", str(self.data), "-U", "postgres", "--auth=trust",
                  "--no-sync", "-E", "UTF8")
        options = f"-k {self.root} -c listen_addresses={self.host} -p {self.port} -c fsync=off"
        self._run(str(self.bin / "pg_ctl"), "start", "-w", "-t", "60", "-D", str(self.data),
                  "-l", str(self.root / "log"), "-o", options)
        return self

    def stop(self) -> None:
        if self.data.exists():
            subprocess.run([*self.as_postgres, str(self.bin / "pg_ctl"), "stop", "-m", "immediate", "-D",
                            str(self.data)], capture_output=True)
        shutil.rmtree(self.root, ignore_errors=True)

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://postgres@{self.host}:{self.port}/{database}"

    def sql(self, statement: str, database: str = "postgres") -> None:
        import psycopg

        with psycopg.connect(self.url(database), autocommit=True) as conn:
            conn.execute(statement)

    def database(self) -> str:
        """A new, empty database's name."""
        name = f"t{os.getpid()}_{next(self._names)}"
        self.sql(f"CREATE DATABASE {name}")
        return name

    def drop(self, name: str) -> None:
        self.sql(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


@pytest.fixture(scope="session")
def postgres() -> Iterator[Postgres]:
    server = Postgres()
    try:
        yield server.start()
    finally:
        server.stop()


@pytest.fixture
def pg_url(postgres: Postgres) -> Iterator[str]:
    name = postgres.database()
    yield postgres.url(name)
    postgres.drop(name)


@pytest.fixture(params=["sqlite", "postgresql"])
def store_at(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """Where a fresh store is, once per backend: open it with ``open_store``."""
    if request.param == "sqlite":
        return str(tmp_path / "s.sqlite")
    return request.getfixturevalue("pg_url")


@pytest.fixture(autouse=True)
def store_on_postgres(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Iterator[Optional[str]]:
    if os.environ.get("COILED_LAB_TEST_STORE") != "postgresql":
        yield None
        return
    url = request.getfixturevalue("pg_url")
    monkeypatch.setenv("DASK_COILED_LAB__STORE__DB", url)  # the test's subprocesses too
    with dask.config.set({"coiled-lab.store.db": url}):
        yield url

