"""Time to N ready workers on "EC2": coiled_lab.Cluster(backend="aws") through moto and the
EC2 emulator (every VM's user-data really runs: bootstrap, package_sync check, TLS, log
shipping to moto's CloudWatch), versus distributed.LocalCluster(n_workers=N), in one run.

Both are timed from the constructor call until a Client sees N workers; both run workers
under nannies. No VM boot time is in it (the emulator starts a process at once): it
measures what coiled-lab adds on top of dask, on this machine's cores.

Usage (from the repository root): python benchmarks/aws_ready.py [--workers 8] [--repeat 1]
"""

from __future__ import annotations

import argparse
import logging
import os
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

REGION = "us-east-1"


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


def time_local_cluster(n: int) -> float:
    from distributed import Client, LocalCluster

    start = time.perf_counter()
    with LocalCluster(n_workers=n, processes=True, dashboard_address=":0") as cluster, Client(cluster) as client:
        client.wait_for_workers(n)
        return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workers", type=int, default=8)
    parser.add_argument("--repeat", type=int, default=1)
    args = parser.parse_args()

    from moto.server import ThreadedMotoServer

    from tests.aws.conftest import console_output
    from tests.aws.emulator import EC2Emulator
    from tests.aws.proxy import AWSProxy
    from tests.pricelist import PriceList

    logging.getLogger("werkzeug").setLevel(logging.WARNING)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    moto_url = f"http://{host}:{port}"
    proxy, prices = AWSProxy(moto_url).start(), PriceList()
    work = Path(tempfile.mkdtemp(prefix="coiled-lab-ready-"))
    os.environ.update(AWS_ENDPOINT_URL=proxy.url, AWS_ENDPOINT_URL_PRICING=prices.url, AWS_DEFAULT_REGION=REGION,
                      AWS_ACCESS_KEY_ID="AKIAFAKEFORBENCHMARK", AWS_SECRET_ACCESS_KEY="fake",
                      AWS_EC2_METADATA_DISABLED="true", DASK_COILED_LAB__STATE_DIR=str(work / "state"))
    import dask.config

    from coiled_lab.cli import main as cli
    from coiled_lab.control.inprocess import InProcessControl
    from coiled_lab.control.manager import ClusterManager

    dask.config.refresh()
    with open(os.devnull, "w") as quiet:
        stdout, sys.stdout = sys.stdout, quiet
        try:  # moto hands out loopback addresses from this range: the dask processes stay on loopback
            assert cli(["setup", "aws", "--region", REGION, "--vpc-cidr", f"127.{random.randint(32, 250)}.0.0/16"]) == 0
        finally:
            sys.stdout = stdout
    emulator = EC2Emulator(moto_url, REGION, work / "ec2").start()
    proxy.add(console_output(emulator))
    control = InProcessControl(ClusterManager(work / "state"))
    try:
        time_local_cluster(1)  # warm the disk cache for both
        ours, theirs = [], []
        for _ in range(args.repeat):  # interleaved, so drift hits both alike
            ours.append(time_coiled(args.workers, control))
            theirs.append(time_local_cluster(args.workers))
        a, b = statistics.median(ours), statistics.median(theirs)
        print(f"{'N':>3}{'coiled_lab on EC2 emulator':>28}{'LocalCluster':>15}{'ratio':>8}")
        print(f"{args.workers:>3}{a:>27.2f}s{b:>14.2f}s{a / b:>8.2f}")
        print(f"median of {args.repeat} run(s) each; {emulator.booted} emulated VMs booted")
    finally:
        control.close()
        emulator.close()
        proxy.close()
        prices.close()
        server.stop()


if __name__ == "__main__":
    main()
