"""Time to N ready workers: coiled_lab.Cluster (local backend: TLS, detached processes, a
separate scheduler process) versus distributed.LocalCluster(n_workers=N, processes=True),
measured in the same run, interleaved, from the constructor call until a Client sees N
workers. Target: ratio <= 1.0.

Two situations are measured, because they differ for both:
- "first": each measurement in a fresh interpreter that has already imported distributed,
  as in a notebook's first cluster (LocalCluster then pays for its in-process scheduler's
  dashboard, i.e. importing bokeh; ours for a scheduler process that imports distributed
  and bokeh, while the warm Python its workers are forked from starts up beside it);
- "again": repeated clusters in one interpreter (LocalCluster's in-process scheduler finds
  everything imported; ours forks its scheduler and workers from that warm Python).

Usage: python benchmarks/local_ready.py [--sizes 2 4 8] [--repeat 3]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time

FRESH = """
import sys, time
import distributed
from distributed import Client
n, kind, state_dir = int(sys.argv[1]), sys.argv[2], sys.argv[3]
if kind == "coiled_lab":
    from coiled_lab import Cluster
    from coiled_lab.control.inprocess import InProcessControl
    from coiled_lab.control.manager import ClusterManager
    control = InProcessControl(ClusterManager(state_dir))
    start = time.perf_counter()
    cluster = Cluster(n_workers=n, control=control)
else:
    from distributed import LocalCluster
    start = time.perf_counter()
    cluster = LocalCluster(n_workers=n, processes=True, dashboard_address=":0")
with Client(cluster) as client:
    client.wait_for_workers(n)
    print(time.perf_counter() - start)
cluster.close()
"""


def fresh(n: int, kind: str, state_dir: str) -> float:
    out = subprocess.run([sys.executable, "-c", FRESH, str(n), kind, state_dir],
                         capture_output=True, text=True, check=True).stdout
    return float(out.strip().splitlines()[-1])


def again_coiled(n: int, control) -> float:
    from distributed import Client

    from coiled_lab import Cluster

    start = time.perf_counter()
    cluster = Cluster(n_workers=n, control=control)
    with Client(cluster) as client:
        client.wait_for_workers(n)
        elapsed = time.perf_counter() - start
    cluster.close()
    return elapsed


def again_local_cluster(n: int) -> float:
    from distributed import Client, LocalCluster

    start = time.perf_counter()
    with LocalCluster(n_workers=n, processes=True, dashboard_address=":0") as cluster, Client(cluster) as client:
        client.wait_for_workers(n)
        return time.perf_counter() - start


def report(label: str, n: int, ours: list[float], theirs: list[float]) -> None:
    a, b = statistics.median(ours), statistics.median(theirs)
    print(f"{label:<7}{n:>3}{a:>12.2f}s{b:>14.2f}s{a / b:>8.2f}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[2, 4, 8])
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as state_dir:
        os.environ["DASK_COILED_LAB__STATE_DIR"] = state_dir
        print(f"{'':<7}{'N':>3}{'coiled_lab':>13}{'LocalCluster':>15}{'ratio':>8}")
        for n in args.sizes:
            ours, theirs = [], []
            for _ in range(args.repeat):  # interleaved, so drift hits both alike
                ours.append(fresh(n, "coiled_lab", state_dir))
                theirs.append(fresh(n, "LocalCluster", state_dir))
            report("first", n, ours, theirs)

        from coiled_lab.control.inprocess import InProcessControl
        from coiled_lab.control.manager import ClusterManager

        control = InProcessControl(ClusterManager(state_dir))
        again_local_cluster(1)
        again_coiled(1, control)
        try:
            for n in args.sizes:
                ours, theirs = [], []
                for _ in range(args.repeat):
                    ours.append(again_coiled(n, control))
                    theirs.append(again_local_cluster(n))
                report("again", n, ours, theirs)
        finally:
            control.close()
    print(f"median of {args.repeat} runs each; target ratio <= 1.0")


if __name__ == "__main__":
    main()
