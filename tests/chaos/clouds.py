"""The backends chaos cycles run against: where each one's faults are armed and how its
leftovers are counted.

- :class:`EmulatedAWS`: moto behind the fault proxy (tests/aws/proxy.py), instances booted
  by the EC2 emulator (tests/aws/emulator.py);
- GCE: a teammate's ``tests/gcp/`` (fakegcp.py, emulator.py) is the place for a second
  class with the same four members (``spec``, ``arm``, ``disarm``, ``leaked``): faults at
  its HTTP boundary, leftovers = instances, instance templates, disks labelled with the
  cluster id. Until it exists the chaos tests run on AWS alone.
"""

from __future__ import annotations

import random
from typing import Any

from ..aws.proxy import FAULT_KINDS, AWSProxy

# The AWS requests a cluster's life makes (seen through the proxy), where faults land.
ACTIONS = (
    "DescribeInstances", "CreateLaunchTemplate", "CreateFleet", "DeleteLaunchTemplate", "TerminateInstances",
    "DescribeVpcs", "DescribeSubnets", "DescribeSecurityGroups", "DescribeLaunchTemplates", "DescribeVolumes",
    "GetParameters", "FilterLogEvents",
)
KINDS = (*FAULT_KINDS, "capacity")


class EmulatedAWS:
    name = "aws (moto + EC2 emulator)"

    def __init__(self, proxy: AWSProxy, emulator: Any, moto: Any, subnets: dict[str, str], read_timeout: float):
        """``moto``: tests.aws.conftest.Moto (looks past the proxy); ``subnets``: zone -> subnet
        of coiled-lab's network; ``read_timeout``: what the manager's boto3 waits (a
        ``timeout`` fault holds a request a second longer)."""
        self.proxy = proxy
        self.emulator = emulator
        self.moto = moto
        self.subnets = subnets
        self.hold = read_timeout + 1

    def spec(self, name: str, n_workers: int) -> dict[str, Any]:
        return {"backend": "aws", "name": name, "n_workers": n_workers}

    def arm(self, rng: random.Random) -> list:
        from .harness import Fault

        faults = []
        for _ in range(rng.randint(1, 4)):
            kind = rng.choice(KINDS)
            if kind == "capacity":
                # One zone short (the fleet moves on), now and then every zone (the launch
                # fails and the manager tries again).
                zones = sorted(self.subnets) if rng.random() < 0.25 else [rng.choice(sorted(self.subnets))]
                fault = Fault(kind, f"CreateFleet[{'+'.join(zones)}]", rng.randint(1, 3))
                fault.fired = self.proxy.insufficient_capacity({self.subnets[z] for z in zones}, times=fault.times)
            else:
                fault = Fault(kind, rng.choice(ACTIONS), rng.randint(1, 2 if kind == "timeout" else 3), rng.randint(0, 6))
                fault.fired = self.proxy.fail(fault.action, kind, fault.times, fault.skip, self.hold)
            faults.append(fault)
        return faults

    def disarm(self) -> None:
        self.proxy.reset()

    def leaked(self, cluster_id: str) -> dict[str, list[str]]:
        found = self.moto.tagged(cluster_id)
        ids = set(self.moto.all_instances(cluster_id))
        processes = [i for i in self.emulator.running() if i in ids]
        if processes:
            found["processes"] = processes
        return found
