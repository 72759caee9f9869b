"""The local backend: real ``dask scheduler`` and ``dask worker`` processes on this machine.

Each process plays the part of a VM. It is started detached (its own session, no
inherited file descriptors) so it outlives the Python process that asked for it, as a
VM outlives a laptop; it carries the cluster's directory in its command line, which is
how :meth:`describe` and :meth:`cleanup` find it (the local analogue of a cloud tag).
Workers run without a nanny unless ``worker_class="distributed.Nanny"`` asks for one: the
manager's reconcile loop replaces lost workers, as it does for lost VMs, and a worker
process costs one Python start instead of two.

A new Python spends ~1 s of CPU importing distributed, which made time to ready a matter
of imports. So this process keeps a :class:`Zygote`, a Python that has imported it once,
and forks dask processes from it: each still starts in a session of its own, with its own
command line, environment and log, and outlives us as before.
"""

from __future__ import annotations

import asyncio
import json
import os
import platform
import secrets
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, Optional

from .. import config
from ..bootstrap import lifetime, watchdog
from ..bootstrap.vm import UTC_PRELOAD
from ..logs import LogRecord, parse_lines
from ..spec import ClusterSpec, running_python
from ..zygote import Zygote
from .base import Backend, ClusterContext, Instance

# Environment variables a dask process may inherit from the server; everything else
# (cloud credentials, Jupyter tokens) stays out of it.
_ENV_ALLOWED = {
    "PATH", "HOME", "USER", "LOGNAME", "LANG", "LC_ALL", "LC_CTYPE", "TZ", "TMPDIR",
    "PYTHONPATH", "VIRTUAL_ENV", "CONDA_PREFIX", "LD_LIBRARY_PATH", "OMP_NUM_THREADS",
}
_ENV_DENIED_MARKERS = ("SECRET", "TOKEN", "PASSWORD", "CREDENTIAL", "COILED_LAB__API")
SCAN_INTERVAL = 10.0  # seconds between two full scans of the process table per cluster


def process_environment(extra: dict[str, str]) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k in _ENV_ALLOWED}
    env.update(
        {
            k: v
            for k, v in os.environ.items()
            if k.startswith("DASK_") and not any(m in k.upper() for m in _ENV_DENIED_MARKERS)
        }
    )
    env.update(extra)
    env["DASK_DISTRIBUTED__COMM__REQUIRE_ENCRYPTION"] = "True"
    env["PYTHONUNBUFFERED"] = "1"
    return env


class LocalBackend(Backend):
    name = "local"

    def __init__(self) -> None:
        # Children we started ourselves, polled so that they never linger as zombies.
        self._children: dict[int, subprocess.Popen] = {}
        self._scanned: dict[str, float] = {}  # cluster id -> time of its last full scan

    def check_spec(self, spec: ClusterSpec) -> None:
        """This machine's rules. Cloud-only options the user set are refused (cloud defaults
        of a shared config are ignored), as are GPUs, spot, another Python or another
        architecture. The worker ceiling (``local.max-workers``) judges new requests and
        changes of ``n_workers``, never a stored spec read again after an admin lowered it
        (a live cluster's next pass, its teardown)."""
        explicit = spec.explicit
        if "worker_gpu" in explicit and spec.worker_gpu:
            raise spec.refused("worker_gpu", "the local backend has no GPUs; allowed: 0")
        if "spot_policy" in explicit and spec.spot_policy != "on-demand":
            raise spec.refused("spot_policy", "the local backend has no spot instances; allowed: 'on-demand'")
        here = running_python()
        if "python_version" in explicit and spec.python_version not in (None, here):
            raise spec.refused("python_version", f"the local backend runs dask with this server's own Python "
                                                 f"({here}); allowed: '{here}', or leave it out")
        if "arm" in explicit and spec.arm and platform.machine().lower() not in ("arm64", "aarch64"):
            raise spec.refused("arm", f"the local backend runs on this machine ({platform.machine()}); "
                                      "allowed: False, or use backend 'aws' or 'gcp'")
        if "worker_class" in explicit and spec.worker_class == "dask_cuda.CUDAWorker":
            raise spec.refused("worker_class", "the local backend has no GPUs; allowed: distributed.Nanny or "
                                               "distributed.Worker")
        for field in ("worker_vm_types", "scheduler_vm_type", "region", "zone", "scheduler_cpu",
                      "scheduler_memory", "worker_disk_size", "allow_ssh_from"):
            if field in explicit and getattr(spec, field):
                raise spec.refused(field, f"the local backend has no {field}; use backend 'aws' or 'gcp'")
        limit = int(config.get("local.max-workers"))
        most = spec.adaptive[1] if spec.adaptive else spec.n_workers
        if most > limit and spec.judged("n_workers"):
            raise spec.refused("n_workers", f"the local backend allows at most {limit} workers "
                                            "(coiled-lab.local.max-workers)")

    # -- paths ------------------------------------------------------------------------
    @staticmethod
    def _scheduler_file(cluster: ClusterContext) -> Path:
        return cluster.directory / "scheduler.json"

    @staticmethod
    def _log_dir(cluster: ClusterContext) -> Path:
        path = cluster.directory / "logs"
        path.mkdir(parents=True, exist_ok=True, mode=0o700)
        return path

    def _tls_args(self, cluster: ClusterContext) -> list[str]:
        cert, key = cluster.directory / "tls-cert.pem", cluster.directory / "tls-key.pem"
        if not cert.exists():
            cluster.tls.write(cluster.directory)
        return ["--tls-ca-file", str(cert), "--tls-cert", str(cert), "--tls-key", str(key)]

    def _spawn(self, cluster: ClusterContext, role: str, instance_id: str, args: list[str], env: dict[str, str]) -> Instance:
        """Start ``python -m <args>`` detached: forked from the zygote if it can, else as a
        new Python. Blocks (a cold zygote is waited for): run it in a thread."""
        log_path = self._log_dir(cluster) / f"{role}-{instance_id}.log"
        argv = [sys.executable, "-m", *args]
        env = process_environment(env)
        warm = zygote()
        pid = warm.fork(argv, env, cluster.directory, log_path) if warm else None
        if pid is None:
            with open(log_path, "ab", buffering=0) as log:
                proc = subprocess.Popen(
                    argv,
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    cwd=cluster.directory,
                    env=env,
                    start_new_session=True,
                    close_fds=True,
                )
            self._children[proc.pid] = proc
            pid = proc.pid
        import psutil

        try:
            created = psutil.Process(pid).create_time()
        except psutil.Error:
            created = time.time()
        return Instance(
            id=instance_id,
            role=role,
            address="127.0.0.1",
            vm_type="local-process",
            zone="localhost",
            launched_at=time.time(),
            data={"pid": pid, "create_time": created, "log": str(log_path)},
        )

    # -- Backend interface ------------------------------------------------------------
    async def launch_scheduler(self, cluster: ClusterContext) -> Instance:
        spec = cluster.spec
        self._scheduler_file(cluster).unlink(missing_ok=True)
        env = dict(spec.environ)
        env.update(lifetime.environment(cluster.id, spec))
        env.update(watchdog.environment(config.get("telemetry") or {}))
        args = [
            "distributed.cli.dask_scheduler",
            "--host", "127.0.0.1",
            "--port", "0",
            "--protocol", "tls",
            *self._tls_args(cluster),
            "--dashboard-address", "127.0.0.1:0",
            "--scheduler-file", str(self._scheduler_file(cluster)),
            "--preload", UTC_PRELOAD,
            "--preload", "coiled_lab.bootstrap.lifetime",
            "--preload", "coiled_lab.bootstrap.watchdog",
        ]
        return await asyncio.to_thread(self._spawn, cluster, "scheduler", "scheduler", args, env)

    async def scheduler_address(self, cluster: ClusterContext, scheduler: Instance) -> Optional[str]:
        try:
            info = json.loads(self._scheduler_file(cluster).read_text())
        except (FileNotFoundError, json.JSONDecodeError):
            return None
        return info.get("address")

    async def launch_workers(self, cluster: ClusterContext, count: int) -> list[Instance]:
        import psutil

        spec = cluster.spec
        n_total = max(spec.n_workers, 1)
        # worker_options (Coiled's name for the worker's own arguments) win over the sizes.
        nthreads = spec.worker_options.get("nthreads") or spec.worker_cpu or max(1, (os.cpu_count() or 1) // n_total)
        memory = spec.worker_options.get("memory_limit") or spec.worker_memory or \
            int(psutil.virtual_memory().total // n_total)
        # No nanny unless asked for: the manager replaces lost workers, as it does lost VMs.
        nanny = "--nanny" if spec.worker_class == "distributed.Nanny" else "--no-nanny"
        commands = []
        for _ in range(count):
            instance_id = f"w{secrets.token_hex(3)}"
            args = [
                "distributed.cli.dask_worker",
                "--scheduler-file", str(self._scheduler_file(cluster)),
                "--name", instance_id,
                "--host", "127.0.0.1",
                "--protocol", "tls",
                *self._tls_args(cluster),
                "--nthreads", str(nthreads),
                "--memory-limit", str(memory),
                nanny,
                "--no-dashboard",
                # A worker whose scheduler is gone exits, as a VM would shut down.
                "--death-timeout", "60",
                "--preload", UTC_PRELOAD,
                "--local-directory", str(cluster.directory / "work"),
            ]
            commands.append((instance_id, args))

        def spawn() -> list[Instance]:
            return [self._spawn(cluster, "worker", name, command, dict(spec.environ)) for name, command in commands]

        return await asyncio.to_thread(spawn)

    async def stop_instances(self, cluster: ClusterContext, instances: list[Instance]) -> None:
        # Workers first: a worker told to close by a closing scheduler can hang in
        # distributed's close path, while one stopped by SIGTERM exits at once.
        for role in ("worker", "scheduler"):
            procs = [p for p in (self._process(i) for i in instances if i.role == role) if p is not None]
            for proc in procs:
                _signal(proc, signal.SIGTERM)
            deadline = time.monotonic() + 10
            while procs and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
                self._reap()
                procs = [p for p in procs if _alive(p)]
            for proc in procs:
                _signal(proc, signal.SIGKILL)
        self._reap()

    async def describe(self, cluster: ClusterContext) -> list[Instance]:
        """Processes of this cluster. A full scan of the process table (~25 ms) finds them
        by command line; between scans, checking the pids the store knows (~0.1 ms) is enough, so a
        provisioning loop polling ten times a second does not eat the CPU the starting
        processes need."""
        self._reap()
        now = time.monotonic()
        if cluster.instances and now - self._scanned.get(cluster.id, -SCAN_INTERVAL) < SCAN_INTERVAL:
            return [i for i in cluster.instances if _alive_or_none(self._process(i))]
        self._scanned[cluster.id] = now
        return self._scan(cluster)

    def _scan(self, cluster: ClusterContext) -> list[Instance]:
        import psutil

        marker = str(cluster.directory / "scheduler.json")
        found = []
        for proc in psutil.process_iter(["pid", "cmdline", "create_time", "status"]):
            try:
                cmd = proc.info["cmdline"] or []
                if marker not in cmd or proc.info["status"] == psutil.STATUS_ZOMBIE:
                    continue
            except psutil.Error:
                continue
            role = "scheduler" if "distributed.cli.dask_scheduler" in cmd else "worker"
            instance_id = cmd[cmd.index("--name") + 1] if "--name" in cmd else role
            found.append(
                Instance(
                    id=instance_id,
                    role=role,
                    address="127.0.0.1",
                    vm_type="local-process",
                    zone="localhost",
                    launched_at=proc.info["create_time"],
                    data={"pid": proc.info["pid"], "create_time": proc.info["create_time"]},
                )
            )
        return found

    async def logs(self, cluster: ClusterContext, since: Optional[float] = None) -> list[LogRecord]:
        """The records of every process's log file; their stamps are UTC (the processes
        preload :mod:`~coiled_lab.bootstrap.utclog`), whatever this machine's zone."""
        records: list[LogRecord] = []
        log_dir = cluster.directory / "logs"
        if not log_dir.exists():
            return records
        for path in sorted(log_dir.glob("*.log")):
            role, _, instance = path.stem.partition("-")
            if since is not None and path.stat().st_mtime < since:
                continue
            with open(path, errors="replace") as f:
                lines = f.readlines()
            parsed = parse_lines(lines, instance, role, fallback_time=path.stat().st_mtime)
            records.extend(r for r in parsed if since is None or r.time >= since)
        records.sort(key=lambda r: r.time)
        return records

    async def cleanup(self, cluster: ClusterContext) -> list[str]:
        self._scanned.pop(cluster.id, None)  # find everything, not only what the store knows
        removed = await super().cleanup(cluster)
        # The private key is of no use once no process of the cluster runs.
        (cluster.directory / "tls-key.pem").unlink(missing_ok=True)
        self._scheduler_file(cluster).unlink(missing_ok=True)
        return removed

    async def instance_price(self, instance: Instance, book: Any) -> float:
        return 0.0  # processes on this machine

    async def catalog(self, region: Optional[str] = None) -> dict[str, Any]:
        import psutil

        return {
            "backend": "local",
            "regions": [{"name": "localhost", "zones": ["localhost"]}],
            "instance_types": [
                {
                    "name": "local-process",
                    "vcpu": os.cpu_count() or 1,
                    "memory": psutil.virtual_memory().total,
                    "gpu": 0,
                    "arch": "arm64" if platform.machine().lower() in ("arm64", "aarch64") else platform.machine(),
                    "price_per_hour": 0.0,
                }
            ],
        }

    # -- helpers ----------------------------------------------------------------------
    def _reap(self) -> None:
        for pid, proc in list(self._children.items()):
            if proc.poll() is not None:
                del self._children[pid]

    def _process(self, instance: Instance):
        """The live process behind an instance, if the pid still belongs to it."""
        import psutil

        pid = instance.data.get("pid")
        if not pid:
            return None
        try:
            proc = psutil.Process(pid)
            created = instance.data.get("create_time")
            if created is not None and abs(proc.create_time() - created) > 1:
                return None  # the pid was reused by another process
            return proc
        except psutil.Error:
            return None


def _signal(proc, sig: int) -> None:
    import psutil

    try:
        proc.send_signal(sig)
    except psutil.Error:
        pass


def _alive_or_none(proc) -> bool:
    return proc is not None and _alive(proc)


def _alive(proc) -> bool:
    import psutil

    try:
        return proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


# -- the zygote: a warm Python that dask processes are forked from ----------------------
_zygote: Optional[Zygote] = None
_zygote_lock = threading.Lock()


def zygote() -> Optional[Zygote]:
    """This process's zygote for the environment dask processes get now: started, or
    replaced when that environment changed or it died. None where a forked process could
    not show a command line of its own (no ``/proc``): there, every process is a new Python."""
    global _zygote
    if sys.platform != "linux":
        return None
    env = process_environment({})
    with _zygote_lock:
        if _zygote is None or _zygote.env != env or not _zygote.alive:
            if _zygote is not None:
                _zygote.close()
            _zygote = Zygote(env)
        return _zygote
