"""A warm Python that the local backend forks dask processes from.

A new Python spends ~1 s of CPU importing distributed (and the scheduler another half
second for its dashboard): on a laptop, most of a local cluster's time to ready. The
local backend (:mod:`coiled_lab.backends.local`) keeps one :class:`Zygote` that has
imported them once and asks it for each scheduler and worker; every forked process still
starts a session of its own, with its own command line, environment, directory and log,
and outlives the server, exactly as a new Python would. This module imports only the
standard library until the zygote's own imports (dask's), so the zygote warms up fast.
"""

from __future__ import annotations

import contextlib
import importlib
import json
import logging
import os
import select
import signal
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any, NoReturn, Optional

logger = logging.getLogger("coiled_lab.local")
# Bytes of command line a forked process can take over: the zygote starts with this much
# room (a blank argument); a process whose command line would not fit starts as a new Python.
ARGV_ROOM = 4096
WARM_TIMEOUT = 60.0  # seconds a launch waits for the zygote's imports before starting a new Python
_MAIN = "from coiled_lab.zygote import serve_forks; serve_forks()"


class Zygote:
    """A Python that has imported what a dask process needs, and forks one on request.

    Importing distributed costs a new Python ~1 s of CPU; a fork of this one starts a
    worker in a fraction of that. It is a new interpreter, not a fork of this process, so
    it holds none of this process's secrets, and it runs with the environment dask
    processes get (:func:`process_environment`), in a session of its own. What it forks
    becomes what :meth:`LocalBackend._spawn` would have started (see :func:`serve_forks`).
    It exits when this process closes its end of the pipe, or dies; what it forked lives on.
    """

    def __init__(self, env: dict[str, str]) -> None:
        self.env = env
        self._proc = subprocess.Popen(
            [sys.executable, "-c", _MAIN, " " * ARGV_ROOM],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            cwd="/",
            env=env,
            start_new_session=True,
            close_fds=True,
        )
        self._lock = threading.Lock()  # one request at a time
        self._room: Optional[int] = None  # bytes a forked command line may take; 0: unusable

    @property
    def alive(self) -> bool:
        return self._proc.poll() is None

    def fork(self, argv: list[str], env: dict[str, str], cwd: Path, log: Path) -> Optional[int]:
        """The pid of a process forked to run ``argv`` in ``cwd`` with ``env``, writing to
        ``log``, once this zygote is warm; None when it cannot make it: not warm within
        :data:`WARM_TIMEOUT`, gone, a command line longer than its room, or an environment
        other than its own beyond coiled-lab's variables (those are read once a process
        runs; others, such as ``OMP_NUM_THREADS``, may matter to what it imported).

        Even a first cluster waits for a cold zygote rather than starting new Pythons: its
        scheduler and workers then import distributed once between them, not each."""
        if {k: v for k, v in env.items() if not k.startswith("COILED_LAB_")} != self.env:
            return None
        with self._lock:
            if self._room is None:  # its first line says it is warm; none within the timeout: stuck
                warm = select.select([self._proc.stdout], [], [], WARM_TIMEOUT)[0]
                self._room = self._answer().get("room", 0) if warm else 0
            if not self._room or len(b"\0".join(map(os.fsencode, argv))) >= self._room:
                return None
            request = {"argv": argv, "env": env, "cwd": str(cwd), "log": str(log)}
            try:
                self._proc.stdin.write(json.dumps(request).encode() + b"\n")
                self._proc.stdin.flush()
            except (OSError, ValueError):  # gone, or closed for one of another environment
                self._room = 0
                return None
            return self._answer().get("pid")

    def close(self) -> None:
        self._proc.stdin.close()
        try:
            self._proc.wait(5)
        except subprocess.TimeoutExpired:
            self._proc.kill()

    def _answer(self) -> dict[str, Any]:
        try:
            return json.loads(self._proc.stdout.readline())
        except ValueError:  # an empty line: it is gone
            logger.warning("the local backend's zygote exited (%s); starting new Pythons instead",
                           self._proc.poll())
            self._room = 0
            return {}


def serve_forks() -> None:
    """The zygote's main: import, say how much command line a child may have, then answer
    each request (a JSON line on stdin) with the pid of a child made for it (a JSON line on
    stdout). What only a scheduler needs (the dashboard, bokeh: most of a second) is
    imported once idle, so that workers asked for at once are not kept waiting."""
    import dask.config

    importlib.import_module("distributed.cli.dask_worker")
    importlib.import_module("distributed.cli.dask_scheduler")
    for name in dask.config.get("distributed.worker.http.routes"):  # known once distributed is imported
        importlib.import_module(name)
    signal.signal(signal.SIGCHLD, signal.SIG_IGN)  # the kernel reaps what we fork
    start, end = _argv_area()
    _tell({"room": end - start})
    later = ["distributed.dashboard.scheduler", *dask.config.get("distributed.scheduler.http.routes")]
    while True:
        if later and not select.select([sys.stdin], [], [], 1.0)[0]:
            with contextlib.suppress(ImportError):  # the scheduler copes (no bokeh: no dashboard)
                importlib.import_module(later.pop(0))
            continue
        line = sys.stdin.readline()
        if not line:
            return
        request = json.loads(line)
        pid = os.fork()
        if pid == 0:
            _become(request, start, end)
        _tell({"pid": pid})


def _tell(message: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(message) + "\n")
    sys.stdout.flush()


def _argv_area() -> tuple[int, int]:
    """Where this process's command line lies in its memory (fields 48 and 49 of
    ``/proc/self/stat``): what ``/proc/<pid>/cmdline`` shows."""
    fields = Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()
    return int(fields[45]), int(fields[46])


def _become(request: dict[str, Any], start: int, end: int) -> NoReturn:
    """In a child of the zygote: become ``python -m <module> <args>`` as a new Python
    started by :meth:`LocalBackend._spawn` would be (own session, log, directory,
    environment and command line, by which :meth:`LocalBackend._scan` finds it) and run it.
    It ends as that Python would, by ``SystemExit`` (or an error) through the interpreter's
    own exit, never back into the zygote's loop."""
    import ctypes

    import dask.config

    os.setsid()
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    log = os.open(request["log"], os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o666)
    os.dup2(os.open(os.devnull, os.O_RDONLY), 0)
    os.dup2(log, 1)
    os.dup2(log, 2)
    os.closerange(3, os.sysconf("SC_OPEN_MAX"))
    os.chdir(request["cwd"])
    os.environ.clear()
    os.environ.update(request["env"])
    dask.config.refresh()
    if "numpy.random" in sys.modules:  # imported with numpy before 2.0
        sys.modules["numpy.random"].seed()  # a sequence of its own, not the zygote's
    argv = request["argv"]
    ctypes.memmove(start, b"\0".join(map(os.fsencode, argv)).ljust(end - start, b"\0"), end - start)
    module = importlib.import_module(argv[2])
    sys.argv = [module.__file__, *argv[3:]]
    module.main.main(args=argv[3:], prog_name=argv[2])  # click's standalone mode: raises SystemExit
    sys.exit(0)
