"""The environments clusters sync, as the server keeps them: ``<state dir>/environments/<hash>.json``.

A kernel or the CLI sends its environment (:class:`~coiled_lab.environment.Environment`)
once, with a create request or ahead of it (``POST /coiled-lab/api/environments``, which
the sidebar uses through the notebook's kernel); clusters then name it by hash, so an
environment sent again is not stored twice. When a request brings none, the cluster syncs
the server's own environment, and :meth:`Environments.resolve` says so: the server
never substitutes its own in silence.
"""

from __future__ import annotations

import json
import os
import sys
import threading
import time
from pathlib import Path
from typing import Any, Optional

from ..environment import Environment, snapshot
from ..errors import quoted
from ..spec import ClusterSpec, ClusterSpecError

SERVER = "the Jupyter server's environment (no environment came with the request)"


class Environments:
    def __init__(self, state_dir: Path):
        self.directory = Path(state_dir) / "environments"
        self._loaded: dict[str, Environment] = {}
        self._server: dict[str, Any] = {}
        self._lock = threading.Lock()

    def stage(self, data: Any) -> Environment:
        """Check ``data`` (raise :class:`ClusterSpecError` naming the field) and keep it."""
        env = Environment.from_json(data)
        path = self.directory / f"{env.hash}.json"
        if path.exists():
            path.touch()  # sent again: in use
        else:
            self.directory.mkdir(parents=True, exist_ok=True, mode=0o700)
            partial = path.with_name(f"{path.name}.{os.getpid()}.{threading.get_ident()}.partial")
            partial.write_text(json.dumps(env.to_json()))
            partial.replace(path)
        self._loaded[env.hash] = env
        return env

    def prune(self, keep: set[str], older_than: float = 30 * 86400) -> list[str]:
        """Remove the kept environments no live cluster uses that were last sent or used
        more than ``older_than`` seconds ago (a kernel whose files change sends a new one
        each time); returns their hashes."""
        removed = []
        now = time.time()
        for path in self.directory.glob("*.json") if self.directory.is_dir() else ():
            env_hash = path.stem
            try:
                if env_hash not in keep and now - path.stat().st_mtime > older_than:
                    path.unlink()
                    self._loaded.pop(env_hash, None)
                    removed.append(env_hash)
            except FileNotFoundError:
                continue
        return removed

    def get(self, env_hash: Optional[str]) -> Optional[Environment]:
        """A kept environment (read once per process), or None."""
        if not env_hash:
            return None
        env = self._loaded.get(env_hash)
        if env is None:
            try:
                env = Environment.from_json(json.loads((self.directory / f"{env_hash}.json").read_text()))
            except (OSError, ValueError, ClusterSpecError):
                return None
            self._loaded[env_hash] = env
        return env

    def resolve(self, spec: ClusterSpec, environment: Any) -> Optional[Environment]:
        """What a new cluster syncs: None when it syncs nothing (local backend, package_sync
        off, a requirements file); the environment sent (a hash already kept, or the
        environment itself); else the server's own (its :attr:`~Environment.where` says so)."""
        env = None
        if isinstance(environment, str):
            env = self.get(environment)
            if env is None:
                raise ClusterSpecError(f"environment: {quoted(environment)} is not allowed: no environment of that hash was "
                                       "sent to this server; send the environment itself", "environment")
        elif environment is not None:  # checked even when unused: bad input is never ignored
            env = self.stage(environment)
        if spec.backend == "local" or not spec.package_sync or spec.software:
            return None
        env = env or self.server()
        chosen = env.filtered(spec.package_sync_ignore, spec.package_sync_only)
        check_syncable(spec, chosen)
        return chosen if chosen is env else self.stage(chosen.to_json())

    def server(self) -> Environment:
        """This server's environment (no files, local packages named but not built), taken
        again only when a directory on ``sys.path`` changed: taking it reads every
        distribution's metadata, a few hundred ms."""
        key = tuple(_mtime(p) for p in sys.path)
        with self._lock:
            if self._server.get("key") != key:
                self._server.update(key=key, value=snapshot(where=SERVER, include=[], environ=[], build=False))
            return self._server["value"]


def _mtime(path: str) -> int:
    try:
        return os.stat(path or ".").st_mtime_ns
    except OSError:
        return 0


def cluster_platform(spec: ClusterSpec) -> str:
    """The platform of a cloud cluster's VMs (Linux; Graviton / Tau T2A with ``arm``)."""
    return "linux-aarch64" if spec.arm else "linux-x86_64"


def check_syncable(spec: ClusterSpec, env: Environment) -> None:
    """Refuse, before anything is launched, what the spec says must not be left out:
    ``package_sync_strict`` needs the VMs' platform and Python; ``package_sync_fail_on:
    warning-or-higher`` (or strict) needs every package shipped. Raise ClusterSpecError
    naming the field, the cause and the fix."""
    if spec.package_sync_strict:
        vms = cluster_platform(spec)
        if env.platform != vms:
            raise ClusterSpecError(
                f"package_sync_strict: True is not allowed: {env.where} runs on {env.platform} and the VMs on {vms}, "
                "so its packages cannot be had exactly; leave package_sync_strict off (the VMs install the same "
                "versions for their platform)", "package_sync_strict")
        if spec.python_version and spec.python_version != env.python:
            raise ClusterSpecError(
                f"package_sync_strict: True is not allowed: {env.where} runs Python {env.python} and the cluster asks "
                f"for {spec.python_version}; leave python_version out, or package_sync_strict off",
                "package_sync_strict")
    if spec.package_sync_strict or spec.package_sync_fail_on == "warning-or-higher":
        field = "package_sync_strict" if spec.package_sync_strict else "package_sync_fail_on"
        missing = env.unsynced()
        if missing:
            more = f" and {len(missing) - 5} more" if len(missing) > 5 else ""
            raise ClusterSpecError(
                f"{field}: {quoted(getattr(spec, field))} is not allowed: these would not reach the VMs: "
                f"{'; '.join(missing[:5])}{more}; install them from the package index, leave them out with "
                "package_sync_ignore, or use package_sync_fail_on='critical-only'", field)
