"""Chaos cycles on moto + the EC2 emulator: create -> scale up -> scale down -> stop with AWS
faults (throttling, 5xx, capacity, timeouts, resets) and the manager SIGKILLed at random;
every cycle must end stopped/error with a message and leave nothing behind.

A bounded count runs here (``COILED_LAB_CHAOS_CYCLES``, default 6, fixed seed
``COILED_LAB_CHAOS_SEED`` so CI replays the same plan); ``benchmarks/chaos.py`` runs 100
with a fresh seed.
"""

from __future__ import annotations

import os

import pytest

from .harness import run

pytestmark = pytest.mark.slow

CYCLES = int(os.environ.get("COILED_LAB_CHAOS_CYCLES", "6"))
SEED = int(os.environ.get("COILED_LAB_CHAOS_SEED", "20261123"))


def test_chaos_cycles_on_emulated_aws_leak_nothing(aws_cloud, state_dir):
    summary = run(aws_cloud, state_dir, SEED, CYCLES)
    for line in summary.lines():
        print(line)
    assert not summary.failed, "\n".join(f"{r.plan}: {r.problems}" for r in summary.failed)
    # The cycles did meet trouble: faults were given and managers were killed.
    assert sum(sum(r.faults.values()) for r in summary.results) > 0
    assert sum(len(r.kills) for r in summary.results) > 0
    assert all(r.status in ("stopped", "error") for r in summary.results)
