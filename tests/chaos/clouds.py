"""The backends chaos cycles run against: where each one's faults are armed and how its
leftovers are counted.

- :class:`EmulatedAWS`: moto behind the fault proxy (tests/aws/proxy.py), instances booted
  by the EC2 emulator (tests/aws/emulator.py);
- :class:`EmulatedGCE`: the fake Google Cloud REST server (tests/gcp/fakegcp.py), VMs
  booted by the GCE emulator (tests/gcp/emulator.py). The fake can throttle (429) and fail
  (500/503) any method; it has no timeouts or resets at the socket level, and its zone
  exhaustion lasts until reset, so those kinds are AWS-only here.

A cloud has four members: ``spec``, ``arm``, ``disarm``, ``leaked``.
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


# The Google Cloud methods a cluster's life calls (as the fake logs them), where faults land.
GCE_METHODS = (
    "compute.regionInstances.bulkInsert", "compute.instances.insert", "compute.instances.delete",
    "compute.instances.aggregatedList", "compute.instances.list", "compute.instances.get",
    "compute.regionOperations.get", "compute.regionOperations.wait", "compute.zoneOperations.get",
    "compute.zoneOperations.wait", "compute.subnetworks.get", "compute.firewalls.list",
    "compute.images.getFromFamily", "logging.entries.list",
)


class EmulatedGCE:
    name = "gcp (fake Compute + GCE emulator)"

    def __init__(self, fake: Any, emulator: Any):
        self.fake = fake
        self.emulator = emulator

    def spec(self, name: str, n_workers: int) -> dict[str, Any]:
        return {"backend": "gcp", "name": name, "n_workers": n_workers}

    def arm(self, rng: random.Random) -> list:
        from .harness import Fault

        faults = []
        for method in rng.sample(GCE_METHODS, rng.randint(1, 3)):  # one fault per method: the fake counts so
            kind = rng.choice(("throttle", "server-error"))
            fault = Fault(kind, method, rng.randint(1, 3))
            fault.fired = self.fake.fail(method, 429 if kind == "throttle" else rng.choice((500, 503)), fault.times)
            faults.append(fault)
        return faults

    def disarm(self) -> None:
        self.fake.reset()

    def leaked(self, cluster_id: str) -> dict[str, list[str]]:
        vms = [v["name"] for v in self.fake.labelled("coiled-lab-cluster", cluster_id)]  # any status: disks
        found = {"instances": vms} if vms else {}
        processes = [n for n in self.emulator.running() if n in vms]
        if processes:
            found["processes"] = processes
        return found
