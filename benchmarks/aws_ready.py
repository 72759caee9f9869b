"""Time to N ready workers on "EC2": coiled_lab.Cluster(backend="aws") through moto and the
EC2 emulator (every VM boots the bare image: uv, a venv, dask and distributed installed
through the emulated network's proxy cache, TLS, log shipping to moto's CloudWatch),
versus distributed.LocalCluster(n_workers=N), in one run.

Both are timed from the constructor call until a Client sees N workers; both run workers
under nannies. The VMs share this machine's cores (a cloud's have their own), and the
boot's installs are in it: see benchmarks/vm_boot.py for the boot phase by phase.

Usage (from the repository root): python benchmarks/aws_ready.py [--workers 8] [--repeat 1]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))


def time_coiled(n: int, control) -> float:
    from distributed import Client

    from coiled_lab import Cluster

    start = time.perf_counter()
    cluster = Cluster(n_workers=n, backend="aws", control=control, timeout=300)
    with Client(cluster) as client:
        client.wait_for_workers(n)
        elapsed = time.perf_counter() - start
    cluster.close()
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workers", type=int, default=8)
    parser.add_argument("--repeat", type=int, default=1)
    args = parser.parse_args()

    from emulated_aws import emulated_aws
    from local_ready import again_local_cluster as time_local_cluster

    with emulated_aws("coiled-lab-ready-") as aws:
        time_local_cluster(1)  # warm the disk cache for both
        ours, theirs = [], []
        for _ in range(args.repeat):  # interleaved, so drift hits both alike
            ours.append(time_coiled(args.workers, aws.control))
            theirs.append(time_local_cluster(args.workers))
        a, b = statistics.median(ours), statistics.median(theirs)
        print(f"{'N':>3}{'coiled_lab on EC2 emulator':>28}{'LocalCluster':>15}{'ratio':>8}")
        print(f"{args.workers:>3}{a:>27.2f}s{b:>14.2f}s{a / b:>8.2f}")
        print(f"median of {args.repeat} run(s) each; {aws.emulator.booted} emulated VMs booted")


if __name__ == "__main__":
    main()
