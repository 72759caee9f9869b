"""Time to N ready workers: coiled_lab.Cluster (local backend, TLS, detached processes)
versus distributed.LocalCluster(n_workers=N, processes=True), measured in the same run.

Both are timed from the constructor call until a Client sees N workers. Target: the
ratio stays <= 1.3.

Usage: python benchmarks/local_ready.py [--sizes 2 4 8] [--repeat 3]
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time


def time_coiled(n: int, control) -> float:
    from distributed import Client

    from coiled_lab import Cluster

    start = time.perf_counter()
    cluster = Cluster(n_workers=n, control=control, idle_timeout="5m")
    with Client(cluster) as client:
        client.wait_for_workers(n)
        elapsed = time.perf_counter() - start
    cluster.close()
    return elapsed


def time_local_cluster(n: int) -> float:
    from distributed import Client, LocalCluster

    start = time.perf_counter()
    with LocalCluster(n_workers=n, processes=True, dashboard_address=":0") as cluster, Client(cluster) as client:
        client.wait_for_workers(n)
        return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--sizes", type=int, nargs="+", default=[2, 4, 8])
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as state_dir:
        os.environ["DASK_COILED_LAB__STATE_DIR"] = state_dir
        from coiled_lab.control.inprocess import InProcessControl
        from coiled_lab.control.manager import ClusterManager

        control = InProcessControl(ClusterManager(state_dir))
        time_local_cluster(1)  # warm the disk cache for both
        print(f"{'N':>3}{'coiled_lab':>13}{'LocalCluster':>15}{'ratio':>8}")
        try:
            for n in args.sizes:
                ours, theirs = [], []
                for _ in range(args.repeat):  # interleaved, so drift hits both alike
                    ours.append(time_coiled(n, control))
                    theirs.append(time_local_cluster(n))
                a, b = statistics.median(ours), statistics.median(theirs)
                print(f"{n:>3}{a:>12.2f}s{b:>14.2f}s{a / b:>8.2f}", flush=True)
        finally:
            control.close()
    print("median of", args.repeat, "runs each; target ratio <= 1.3")


if __name__ == "__main__":
    main()
