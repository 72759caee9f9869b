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

from .harness import check, run

pytestmark = pytest.mark.slow

CYCLES = int(os.environ.get("COILED_LAB_CHAOS_CYCLES", "6"))
SEED = int(os.environ.get("COILED_LAB_CHAOS_SEED", "20261123"))


def test_chaos_cycles_on_emulated_aws_leak_nothing(aws_cloud, state_dir):
    check(run(aws_cloud, state_dir, SEED, CYCLES))
