"""Chaos cycles at length: create -> scale up -> scale down -> stop on moto + the EC2
emulator, with AWS faults injected at random at the HTTP boundary (throttling, 5xx,
capacity, timeouts, connection resets before and after the work) and the manager process
SIGKILLed at random points and started again on the same store. Prints each cycle's plan
(with the seed, to replay it) and outcome, then cycles run, faults injected by kind,
manager kills, how clusters ended, resources leaked (target: 0 in 100 cycles) and time.

The engine and the AWS fault plan are tests/chaos/ (the CI test runs a few cycles).

Usage (from the repository root): python benchmarks/chaos.py [--cycles 100] [--seed N]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

READ_TIMEOUT = 8.0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cycles", type=int, default=100)
    parser.add_argument("--seed", type=int, default=None, help="default: a fresh one (printed)")
    args = parser.parse_args()
    seed = args.seed if args.seed is not None else random.randrange(1, 10**6)

    from tests.aws.conftest import TEST_CONFIG, Moto, _env_name

    # The manager runs in subprocesses: they read coiled-lab's config from the environment.
    config = {**TEST_CONFIG, "coiled-lab.aws.read-timeout": READ_TIMEOUT, "coiled-lab.manager.check-interval": 0.5}
    os.environ.update({_env_name(k): str(v) for k, v in config.items()})

    from emulated_aws import REGION, emulated_aws

    from coiled_lab.backends.aws import network
    from coiled_lab.backends.aws.session import AWSSession
    from tests.chaos.clouds import EmulatedAWS
    from tests.chaos.harness import run

    print(f"seed {seed}: replay with --seed {seed}", flush=True)
    started = time.monotonic()
    with emulated_aws("coiled-lab-chaos-", config) as aws:
        subnets = asyncio.run(network.find(AWSSession(), REGION)).subnets
        cloud = EmulatedAWS(aws.proxy, aws.emulator, Moto(aws.moto_url), subnets, READ_TIMEOUT)
        state = Path(aws.control.manager.state_dir).parent / "chaos" / "state"
        summary = run(cloud, state, seed, args.cycles, echo=lambda line: print(line, flush=True))
        booted = aws.emulator.booted
    print()
    for line in summary.lines():
        print(line)
    print(f"{booted} emulated VMs booted; wall time {time.monotonic() - started:.0f}s")
    return 1 if summary.failed else 0


if __name__ == "__main__":
    sys.exit(main())
