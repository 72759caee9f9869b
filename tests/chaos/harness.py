"""Chaos cycles: create -> scale up -> scale down -> stop, again and again, while the cloud
misbehaves at its HTTP boundary and the manager process is SIGKILLed at random moments.

The engine knows nothing of any cloud. A :class:`Cloud` (``tests/chaos/clouds.py``) arms a
cycle's faults where that cloud's API answers, says what spec to ask for, and lists what
is left of a cluster afterwards; the AWS one works on moto, the fault proxy and the EC2
emulator. Every random choice comes from one seeded ``random.Random``, and each cycle's
plan (faults, kill points) is printed with the seed, so a failing cycle can be replayed
(timing between threads aside). After each cycle the cluster must be ``stopped`` or
``error`` with a message a person can read, and nothing made for it may remain.
"""

from __future__ import annotations

import json
import os
import queue
import random
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Protocol

from coiled_lab.control.states import FINAL, State
from coiled_lab.control.store import ClusterRecord, Store

ROOT = Path(__file__).resolve().parents[2]


@dataclass
class Fault:
    """One armed fault: ``kind`` on ``action`` after ``skip`` requests, ``times`` times."""

    kind: str
    action: str
    times: int
    skip: int = 0
    fired: list[int] = field(default_factory=lambda: [0])

    def __str__(self) -> str:
        return f"{self.kind}x{self.times}@{self.action}+{self.skip}"


class Cloud(Protocol):
    """What the engine needs of a backend under test."""

    name: str

    def spec(self, name: str, n_workers: int) -> dict[str, Any]:
        """The spec of a chaos cluster on this backend."""

    def arm(self, rng: random.Random) -> list[Fault]:
        """Inject this cycle's faults at the cloud's HTTP boundary."""

    def disarm(self) -> None:
        """Remove every fault still armed."""

    def leaked(self, cluster_id: str) -> dict[str, list[str]]:
        """What still exists for the cluster (kind -> ids); empty when nothing."""


class ManagerProcess:
    """``tests/chaos/manager_process.py`` on a state dir: started, asked, SIGKILLed, restarted."""

    def __init__(self, state_dir: Path, log: Path):
        self.state_dir = state_dir
        self.log = log
        self.proc: Optional[subprocess.Popen] = None
        self._lines: queue.Queue = queue.Queue()
        self.starts = 0

    def start(self, timeout: float = 90) -> None:
        with open(self.log, "a") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "tests.chaos.manager_process", str(self.state_dir)],
                cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log, text=True,
                env={**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))},
            )
        self._lines = queue.Queue()
        threading.Thread(target=self._read, args=(self.proc, self._lines), daemon=True).start()
        self.starts += 1
        ready = self._next(timeout)
        if "ready" not in ready:
            raise RuntimeError(f"the manager did not start: {ready}")

    @staticmethod
    def _read(proc: subprocess.Popen, lines: queue.Queue) -> None:
        for line in proc.stdout:  # type: ignore[union-attr]
            lines.put(json.loads(line))
        lines.put(None)

    def _next(self, timeout: float) -> dict[str, Any]:
        try:
            answer = self._lines.get(timeout=timeout)
        except queue.Empty:
            raise TimeoutError(f"the manager did not answer within {timeout}s (log: {self.log})") from None
        if answer is None:
            raise RuntimeError(f"the manager exited with {self.proc.wait()} (log: {self.log})")
        return answer

    def send(self, verb: str, *args: Any) -> None:
        self.proc.stdin.write(json.dumps({"verb": verb, "args": list(args)}) + "\n")  # type: ignore[union-attr]
        self.proc.stdin.flush()  # type: ignore[union-attr]

    def answer(self, timeout: float = 90) -> dict[str, Any]:
        return self._next(timeout)

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def kill(self) -> None:
        if self.alive():
            self.proc.send_signal(signal.SIGKILL)  # type: ignore[union-attr]
        if self.proc is not None:
            self.proc.wait(30)

    def close(self) -> None:
        """End of input: the manager closes itself (clusters keep running)."""
        if not self.alive():
            return
        self.proc.stdin.close()  # type: ignore[union-attr]
        try:
            self.proc.wait(30)  # type: ignore[union-attr]
        except subprocess.TimeoutExpired:
            self.kill()


@dataclass
class CycleResult:
    index: int
    cluster_id: Optional[str]
    status: Optional[str]
    message: Optional[str]
    faults: Counter  # failures actually given, by kind
    kills: list[str]  # where the manager was killed
    leaked: dict[str, list[str]]
    problems: list[str]  # what broke the promise (empty: the cycle passed)
    seconds: float
    plan: str

    @property
    def ok(self) -> bool:
        return not self.problems


class Chaos:
    """Runs cycles against one cloud; ``kill_chance`` is the chance of a SIGKILL per step."""

    STEPS = (("create", 1), ("scale", 2), ("scale", 1), ("stop", None))

    def __init__(self, cloud: Cloud, state_dir: Path, seed: int, kill_chance: float = 0.35,
                 step_timeout: float = 240, leak_timeout: float = 60):
        self.cloud = cloud
        self.state_dir = Path(state_dir)
        self.state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.seed = seed
        self.rng = random.Random(seed)
        self.kill_chance = kill_chance
        self.step_timeout = step_timeout
        self.leak_timeout = leak_timeout
        self.manager = ManagerProcess(self.state_dir, self.state_dir.parent / "manager.log")
        self.store: Optional[Store] = None
        self._kills: list[str] = []

    def __enter__(self) -> "Chaos":
        self.manager.start()
        self.store = Store(self.state_dir / "coiled-lab.sqlite")  # a reader beside the manager
        return self

    def __exit__(self, *exc: Any) -> None:
        self.manager.close()
        if self.store is not None:
            self.store.close()

    # -- one cycle ------------------------------------------------------------------------
    def cycle(self, index: int) -> CycleResult:
        started = time.monotonic()
        name = f"chaos-{self.seed}-{index}"
        self._kills = []
        faults = self.cloud.arm(self.rng)
        kill_points = [(self.rng.random() < self.kill_chance / 3, self.rng.random() < self.kill_chance,
                        self.rng.uniform(0.0, 4.0)) for _ in self.STEPS]
        plan = f"seed {self.seed} cycle {index}: faults [{', '.join(map(str, faults)) or 'none'}]; kills " + \
            ",".join(f"{verb}{'!' if a else ''}{f'@{d:.1f}s' if b else ''}"
                     for (verb, _), (a, b, d) in zip(self.STEPS, kill_points))
        problems: list[str] = []
        try:
            if not self.manager.alive():  # a previous cycle's failure took it down
                self.manager.start()
            for (verb, arg), (kill_at_once, kill_later, delay) in zip(self.STEPS, kill_points):
                rec = self._find(name)
                if verb != "create" and (rec is None or rec.status in FINAL):
                    break  # it ended early (an error): only the end-of-cycle checks remain
                self._command(verb, name, arg, kill_at_once)
                self._await(name, "stopped" if verb == "stop" else "running", delay if kill_later else None)
        except Exception as exc:  # noqa: BLE001 - a broken cycle is reported, then stopped
            problems.append(f"{type(exc).__name__}: {exc}")
        finally:
            self.cloud.disarm()
        rec = self._find(name)
        if rec is not None and rec.status not in FINAL:  # a step that never converged, or broke
            problems.append(f"{rec.status} after the cycle's steps: {rec.message}")
            try:  # so that the next cycles start from nothing
                if not self.manager.alive():
                    self.manager.start()
                self._command("stop", name, None, False)
                self._await(name, "stopped", None)
            except Exception as exc:  # noqa: BLE001
                problems.append(f"and stopping it failed: {type(exc).__name__}: {exc}")
            rec = self._find(name)
        leaked: dict[str, list[str]] = {}
        if rec is not None:
            problems += self._check_end(rec)
            leaked = self._leftovers(rec.id)
            if leaked:
                problems.append(f"leaked: {leaked}")
        elif not problems:
            problems.append("the cluster was never recorded")
        fired = Counter()
        for fault in faults:
            fired[fault.kind] += fault.fired[0]
        return CycleResult(index, rec.id if rec else None, str(rec.status) if rec else None,
                           rec.message if rec else None, fired, list(self._kills), leaked, problems,
                           time.monotonic() - started, plan)

    def _find(self, name: str) -> Optional[ClusterRecord]:
        return self.store.find_cluster(name)  # type: ignore[union-attr]

    def _restart(self, where: str) -> None:
        self.manager.kill()
        self._kills.append(where)
        self.manager.start()

    def _command(self, verb: str, name: str, arg: Any, kill_at_once: bool) -> None:
        """Ask the manager; if it is killed before it answers, ask the new one again (every
        verb is safe to repeat: a create is only repeated when nothing was recorded)."""
        if verb == "create":
            args: list[Any] = [self.cloud.spec(name, arg)]
        elif verb == "scale":
            args = [name, arg]
        else:
            args = [name]
        self.manager.send(verb, *args)
        if kill_at_once:
            self._restart(f"{verb} (before its answer)")
            if verb == "create" and self._find(name) is not None:
                return
            self.manager.send(verb, *args)
        answer = self.manager.answer()
        if "error" in answer:
            rec = self._find(name)
            if rec is not None and rec.status in FINAL and answer["error"].startswith("Conflict"):
                return  # it ended (an error) between our look and the request
            raise RuntimeError(f"{verb} {args}: {answer['error']}")

    def _await(self, name: str, want: str, kill_after: Optional[float]) -> None:
        """Until the cluster is ``want`` (or final), killing the manager once ``kill_after``
        seconds in if asked. Reads the store as any second process may."""
        start = time.monotonic()
        while True:
            rec = self._find(name)
            if rec is not None and (rec.status == State(want) or rec.status in FINAL):
                return
            if not self.manager.alive():
                raise RuntimeError(f"the manager died on its own (log: {self.manager.log})")
            waited = time.monotonic() - start
            if kill_after is not None and waited >= kill_after:
                self._restart(f"waiting for {want} ({rec.status if rec else 'unrecorded'}, {waited:.1f}s)")
                kill_after = None
            if waited > self.step_timeout:
                raise TimeoutError(f"{name} still {rec.status if rec else 'unrecorded'} after "
                                   f"{self.step_timeout:g}s waiting for {want}")
            time.sleep(0.1)

    def _check_end(self, rec: ClusterRecord) -> list[str]:
        problems = []
        if rec.status not in (State.stopped, State.error):
            problems.append(f"ended {rec.status}, not stopped or error")
        if not rec.message or not rec.message.strip() or "Traceback (most recent call last)" in rec.message:
            problems.append(f"no human message: {rec.message!r}")
        live = self.store.instances(rec.id)  # type: ignore[union-attr]
        if live:
            problems.append(f"the store still counts instances as live: {[i.id for i in live]}")
        return problems

    def _leftovers(self, cluster_id: str) -> dict[str, list[str]]:
        """What remains once the cloud had ``leak_timeout`` seconds to finish terminating."""
        deadline = time.monotonic() + self.leak_timeout
        while True:
            leaked = self.cloud.leaked(cluster_id)
            if not leaked or time.monotonic() > deadline:
                return leaked
            time.sleep(0.25)


@dataclass
class Summary:
    seed: int
    cloud: str
    results: list[CycleResult]

    @property
    def failed(self) -> list[CycleResult]:
        return [r for r in self.results if not r.ok]

    def lines(self) -> list[str]:
        faults: Counter = Counter()
        for r in self.results:
            faults.update(r.faults)
        ends = Counter(r.status for r in self.results)
        leaks = sum(1 for r in self.results if r.leaked)
        resources = sum(len(v) for r in self.results for v in r.leaked.values())
        seconds = sum(r.seconds for r in self.results)
        return [
            f"chaos on {self.cloud}, seed {self.seed}: {len(self.results)} cycles in {seconds:.0f}s "
            f"({seconds / max(1, len(self.results)):.1f}s each)",
            "faults injected: " + (", ".join(f"{k} {v}" for k, v in sorted(faults.items()) if v) or "none")
            + f" (total {sum(faults.values())})",
            f"manager SIGKILLs: {sum(len(r.kills) for r in self.results)}",
            "clusters ended: " + ", ".join(f"{k} {v}" for k, v in sorted(ends.items(), key=str)),
            f"cycles leaking: {leaks} of {len(self.results)}; resources leaked: {resources}",
            f"cycles failing a check: {len(self.failed)}",
        ]


def run(cloud: Cloud, state_dir: Path, seed: int, cycles: int, echo=print) -> Summary:
    """Run ``cycles`` cycles; each cycle's plan and outcome go to ``echo``."""
    results = []
    with Chaos(cloud, state_dir, seed) as chaos:
        for i in range(cycles):
            result = chaos.cycle(i)
            results.append(result)
            echo(f"{result.plan} -> {result.status} ({result.seconds:.1f}s, {len(result.kills)} kills)"
                 + (f" PROBLEMS: {result.problems}" if result.problems else ""))
    return Summary(seed, cloud.name, results)


def check(summary: Summary) -> None:
    """What a chaos test asserts: every cycle kept the promise (ended stopped/error with a
    message, nothing left), and the cycles did meet trouble (faults given, managers killed)."""
    for line in summary.lines():
        print(line)
    assert not summary.failed, "\n".join(f"{r.plan}: {r.problems}" for r in summary.failed)
    assert sum(sum(r.faults.values()) for r in summary.results) > 0
    assert sum(len(r.kills) for r in summary.results) > 0
    assert all(r.status in ("stopped", "error") for r in summary.results)
