"""Boot of a bare VM, phase by phase: from the create request (the scheduler's CreateFleet
or bulkInsert follows at once) to the first dask worker registered, on "EC2" (moto + the
EC2 emulator) and "GCE" (the fake + the GCE emulator), both booting bare Debian 12 VMs
(tests/vm; root only).

Two environments: ``dask-only`` (package_sync off: the VMs install dask and distributed at
this environment's versions) and ``kernel`` (package_sync of this environment, as a
notebook's kernel would ask). For each it prints the boot lines of the scheduler's and
the first worker's console (uv, Python, packages, dask), then one line::

    boot: <seconds> s to first worker, <bytes> downloaded from the package index

Bytes are what the VMs fetched from the index through the emulated network's egress
proxy (its pull-through cache included: a real VM downloads them all itself). The first
run on a machine also builds the image (~30 s) and fills the proxy's cache.

Usage (from the repository root, as root):
    python benchmarks/vm_boot.py [--cloud aws|gcp|both] [--env dask-only|kernel|both]
"""

from __future__ import annotations

import argparse
import re
import sys
import time
from pathlib import Path
from typing import Callable

sys.path.insert(0, str(Path(__file__).resolve().parent))

BOOT_LINE = re.compile(r"boot: (?P<phase>[a-z]+)\b(?P<details>.*) in (?P<seconds>[0-9]+\.[0-9]) s$")


def phases(console: str) -> list[str]:
    return [m.group(0) for line in console.splitlines() if (m := BOOT_LINE.search(line))]


def boot_once(control, network, consoles: Callable[[str], dict[str, str]], backend: str,
              package_sync: bool) -> None:
    """One cluster (scheduler + 1 worker) from the create request to its first worker;
    ``consoles(cluster_id)``: each role's console text."""
    from coiled_lab.spec import ClusterSpecError

    network.reset_counters()
    start = time.perf_counter()
    try:
        cluster = control.run(control.create({"backend": backend, "n_workers": 1, "package_sync": package_sync}))
    except ClusterSpecError as exc:
        print(f"  refused before launch: {exc}")
        return
    record = control.run(control.wait(cluster["id"], timeout=900))
    elapsed = time.perf_counter() - start
    try:
        if record["status"] != "running":
            print(f"  {record['status']}: {record.get('message')}")
            return
        for role, console in consoles(cluster["id"]).items():
            for line in phases(console):
                print(f"  {role:9} {line}")
        fetched = sum(network.downloaded().values()) + sum(network.from_cache().values())
        print(f"boot: {elapsed:.1f} s to first worker, {fetched} downloaded from the package index")
    finally:
        control.run(control.stop(cluster["id"]))
        control.run(control.wait(cluster["id"], ("stopped",), timeout=120))


def environments(env: str) -> list[tuple[str, bool]]:
    return [(name, sync) for name, sync in (("dask-only", False), ("kernel", True)) if env in (name, "both")]


def on_aws(env: str) -> None:
    from emulated_aws import emulated_aws
    from tests.aws.conftest import TEST_CONFIG, Moto

    with emulated_aws("coiled-lab-vm-boot-", TEST_CONFIG) as aws:
        moto = Moto(aws.moto_url)

        def consoles(cluster_id: str) -> dict[str, str]:
            return {role: aws.emulator.console(moto.instances(cluster_id, role)[0]["InstanceId"]) or ""
                    for role in ("scheduler", "worker")}

        for name, sync in environments(env):
            print(f"EC2, {name} environment:")
            boot_once(aws.control, aws.network, consoles, "aws", sync)


def on_gcp(env: str) -> None:
    from emulated_gcp import emulated_gcp
    from tests.gcp.conftest import labelled

    with emulated_gcp("coiled-lab-vm-boot-") as gcp:
        def consoles(cluster_id: str) -> dict[str, str]:
            return {role: gcp.emulator.console(labelled(gcp.fake, cluster_id, role)[0]["name"]) or ""
                    for role in ("scheduler", "worker")}

        for name, sync in environments(env):
            print(f"GCE, {name} environment:")
            boot_once(gcp.control, gcp.network, consoles, "gcp", sync)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cloud", choices=("aws", "gcp", "both"), default="both")
    parser.add_argument("--env", choices=("dask-only", "kernel", "both"), default="both")
    args = parser.parse_args()
    if args.cloud in ("aws", "both"):
        on_aws(args.env)
    if args.cloud in ("gcp", "both"):
        on_gcp(args.env)


if __name__ == "__main__":
    main()
