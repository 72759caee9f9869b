"""What the JupyterHub test needs beyond pip: a Python other Unix users can run, the hub's
proxy from npm, and Unix accounts.

This machine's Python lives under /root (other users cannot read it), so the users'
servers and the service run in a venv of Debian's ``/usr/bin/python3`` in a world-readable
cache (``COILED_LAB_HUB_CACHE``, default ``/var/cache/coiled-lab-tests/hub``), built once
and keyed by the dependencies it holds. coiled-lab itself is not installed there: each
test session copies its sources into a world-readable directory put on ``PYTHONPATH``, so
the venv never goes stale as the code changes. configurable-http-proxy is installed with
npm into the same cache when it is missing.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import pwd
import secrets
import shutil
import subprocess
import sys
import time
import tomllib
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parents[2]
# What the users' servers and the service import, beyond coiled-lab's own dependencies.
EXTRA = ["jupyterhub>=4,<6", "psycopg[binary]>=3.1", "prometheus_client>=0.17"]
CHP_VERSION = "4.6.3"


def cache_dir() -> Path:
    configured = os.environ.get("COILED_LAB_HUB_CACHE")
    path = Path(configured) if configured else Path("/var/cache/coiled-lab-tests/hub")
    path.mkdir(parents=True, exist_ok=True)
    for parent in (path, *path.parents):
        if parent == Path("/"):
            break
        parent.chmod(parent.stat().st_mode | 0o755)
    return path


def requirements() -> list[str]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    return sorted(set(project["dependencies"]) | set(EXTRA))


def venv() -> Path:
    """The venv (built first when missing; prints one line when it builds)."""
    reqs = requirements()
    key = hashlib.sha256(json.dumps(reqs).encode()).hexdigest()[:12]
    home = cache_dir() / f"venv-{key}"
    python = home / "bin" / "python"
    with open(cache_dir() / "venv.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if python.exists() and (home / ".complete").exists():
            return home
        shutil.rmtree(home, ignore_errors=True)
        started = time.monotonic()
        subprocess.run(["/usr/bin/python3", "-m", "venv", str(home)], check=True, capture_output=True)
        done = subprocess.run([str(python), "-m", "pip", "install", "-q", *reqs], capture_output=True, text=True)
        if done.returncode:
            raise RuntimeError(f"building the hub test venv failed: {done.stderr[-2000:]}")
        # Users' servers load coiled-lab's extension as an installed copy would.
        config = home / "etc" / "jupyter" / "jupyter_server_config.d"
        config.mkdir(parents=True, exist_ok=True)
        shutil.copy(ROOT / "jupyter-config" / "server-config" / "coiled_lab_server.json", config)
        (home / ".complete").touch()
        subprocess.run(["chmod", "-R", "a+rX", str(home)], check=True)
        print(f"hub test venv: built in {time.monotonic() - started:.0f} s at {home}", file=sys.stderr)
        return home


def proxy_command() -> list[str]:
    """configurable-http-proxy, from npm into the cache when it is not installed."""
    found = shutil.which("configurable-http-proxy")
    if found:
        return [found]
    prefix = cache_dir() / f"chp-{CHP_VERSION}"
    binary = prefix / "node_modules" / ".bin" / "configurable-http-proxy"
    with open(cache_dir() / "chp.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not binary.exists():
            subprocess.run(["npm", "install", "--silent", "--prefix", str(prefix),
                            f"configurable-http-proxy@{CHP_VERSION}"], check=True, capture_output=True)
    return [str(binary)]


def sources(where: Path) -> Path:
    """A world-readable copy of coiled-lab's packages, for PYTHONPATH."""
    target = where / "src"
    ignore = shutil.ignore_patterns("__pycache__", "labextension", "*.pyc")
    shutil.copytree(ROOT / "coiled_lab", target / "coiled_lab", ignore=ignore)
    shutil.copytree(ROOT / "server_extension" / "coiled_lab_server", target / "coiled_lab_server", ignore=ignore)
    subprocess.run(["chmod", "-R", "a+rX", str(where)], check=True)
    return target


class UnixUser:
    """A Unix account made for the test (``useradd -m``), removed with its home."""

    def __init__(self, role: str):
        self.name = f"clt{role}{secrets.token_hex(3)}"
        subprocess.run(["useradd", "-m", "-s", "/bin/bash", self.name], check=True, capture_output=True)
        entry = pwd.getpwnam(self.name)
        self.uid, self.home = entry.pw_uid, Path(entry.pw_dir)

    def run(self, *cmd: str, env: dict | None = None) -> subprocess.CompletedProcess:
        """``cmd`` as this user (a login shell's environment, not root's)."""
        return subprocess.run(list(cmd), user=self.uid, group=self.uid, extra_groups=[], cwd=self.home,
                              capture_output=True, text=True, timeout=60,
                              env=env or {"PATH": "/usr/bin:/bin", "HOME": str(self.home), "USER": self.name})

    def processes(self) -> list[psutil.Process]:
        """The processes running as this (test-made, so test-started) user."""
        found = []
        for proc in psutil.process_iter(["uids"]):
            try:
                if proc.info["uids"] and proc.info["uids"].real == self.uid:
                    found.append(proc)
            except psutil.Error:
                continue
        return found

    def remove(self) -> None:
        for proc in self.processes():
            try:
                proc.kill()
            except psutil.Error:
                pass
        psutil.wait_procs(self.processes(), timeout=10)
        subprocess.run(["userdel", "-r", "-f", self.name], capture_output=True)
