"""Chaos cycles on the fake Google Cloud + the GCE emulator: the engine of tests/chaos with
GCE's faults (429s and 5xx on Compute and Logging methods) and the manager SIGKILLed at
random; every cycle must end stopped/error with a message and leave no VM or process."""

from __future__ import annotations

import os

import pytest

from ..harness import check, run
from ..test_chaos import SEED

pytestmark = pytest.mark.slow

CYCLES = int(os.environ.get("COILED_LAB_CHAOS_GCE_CYCLES", "4"))


def test_chaos_cycles_on_emulated_gce_leak_nothing(gce_cloud, state_dir):
    check(run(gce_cloud, state_dir, SEED, CYCLES))
