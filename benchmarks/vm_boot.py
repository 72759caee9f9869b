"""Boot of a bare VM, phase by phase: from the create request (the scheduler's CreateFleet
follows at once) to the first dask worker registered, on "EC2" (moto + the EC2 emulator's
bare Debian 12 VMs, tests/vm; root only).

Two environments: ``dask-only`` (package_sync off: the VMs install dask and distributed at
this environment's versions) and ``kernel`` (package_sync of this environment, as a
notebook's kernel would ask). For each it prints the boot lines of the scheduler's and
the first worker's console (uv, Python, packages, dask), then one line::

    boot: <seconds> s to first worker, <bytes> downloaded from the package index

Bytes are what the VMs fetched from the index through the emulated network's egress
proxy (its pull-through cache included: a real VM downloads them all itself). The first
run on a machine also builds the image (~30 s) and fills the proxy's cache.

Usage (from the repository root, as root): python benchmarks/vm_boot.py [--env dask-only|kernel|both]
"""

from __future__ import annotations

import argparse
import re
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

BOOT_LINE = re.compile(r"boot: (?P<phase>[a-z]+)\b(?P<details>.*) in (?P<seconds>[0-9]+\.[0-9]) s$")


def phases(console: str) -> list[str]:
    return [m.group(0) for line in console.splitlines() if (m := BOOT_LINE.search(line))]


def boot_once(aws, package_sync: bool) -> None:
    from coiled_lab.spec import ClusterSpecError
    from tests.aws.conftest import Moto

    control, moto = aws.control, Moto(aws.moto_url)
    aws.network.reset_counters()
    start = time.perf_counter()
    try:
        cluster = control.run(control.create({"backend": "aws", "n_workers": 1, "package_sync": package_sync}))
    except ClusterSpecError as exc:
        print(f"  refused before launch: {exc}")
        return
    record = control.run(control.wait(cluster["id"], timeout=900))
    elapsed = time.perf_counter() - start
    try:
        if record["status"] != "running":
            print(f"  {record['status']}: {record.get('message')}")
            return
        for role in ("scheduler", "worker"):
            [instance, *_] = moto.instances(cluster["id"], role)
            for line in phases(aws.emulator.console(instance["InstanceId"]) or ""):
                print(f"  {role:9} {line}")
        fetched = sum(aws.network.downloaded().values()) + sum(aws.network.from_cache().values())
        print(f"boot: {elapsed:.1f} s to first worker, {fetched} downloaded from the package index")
    finally:
        control.run(control.stop(cluster["id"]))
        control.run(control.wait(cluster["id"], ("stopped",), timeout=120))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--env", choices=("dask-only", "kernel", "both"), default="both")
    args = parser.parse_args()

    from emulated_aws import emulated_aws
    from tests.aws.conftest import TEST_CONFIG

    with emulated_aws("coiled-lab-vm-boot-", TEST_CONFIG) as aws:
        for name, sync in (("dask-only", False), ("kernel", True)):
            if args.env in (name, "both"):
                print(f"{name} environment:")
                boot_once(aws, sync)


if __name__ == "__main__":
    main()
