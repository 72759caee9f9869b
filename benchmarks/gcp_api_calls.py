"""Google Cloud API requests to launch and to stop a cluster of N workers with coiled-lab's
GCP backend, counted at the HTTP boundary: the fake REST server of the tests
(tests/gcp/fakegcp.py), which the real google clients talk to.

The backend is driven as the manager drives it: launch = network, a look at what runs,
the scheduler, every worker, the scheduler's address; stop = a look at what runs (after
its cached view has expired), delete, clean up. Target: <= 15 requests to launch and
<= 3 to stop, whatever N. Workers go in one ``regionInstances.bulkInsert``; deletions in
Compute's batch endpoint (up to 1000 ``instances.delete`` per HTTP request), so the
"calls" column (what the fake served, a batch's deletions each counted) grows with N while
requests do not. Requests for access tokens (google-auth's, once an hour per set of
credentials, not per cluster) are counted apart. No VM boots: only API requests are measured.
A last row launches N = 10 with the first worker machine type out of stock in every zone
(the fake's stockout): the workers fall back to the next type, one more bulkInsert.

Usage: python benchmarks/gcp_api_calls.py [--sizes 1 10 50 1000]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import secrets
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

REGION = "us-central1"


async def coiled_lab_requests(n: int, state_dir: Path, fake) -> tuple[int, int, int, int, Counter]:
    """(HTTP requests to launch, to stop, API calls to launch, to stop, launch calls by method)."""
    from coiled_lab import config
    from coiled_lab.backends.base import ClusterContext
    from coiled_lab.backends.gcp import GCPBackend
    from coiled_lab.spec import parse_spec
    from coiled_lab.tls import TLSMaterial

    backend = GCPBackend()
    cluster_id = secrets.token_hex(6)
    directory = state_dir / "clusters" / cluster_id
    directory.mkdir(parents=True)
    ctx = ClusterContext(id=cluster_id, name=f"bench-{n}",
                         spec=parse_spec({"backend": "gcp", "n_workers": n, "package_sync": False}),
                         tls=TLSMaterial.generate(cluster_id), directory=directory)

    http, calls = fake.http_requests, len(fake.calls())
    ctx.state = await backend.ensure_network(ctx)
    await backend.describe(ctx)
    scheduler = await backend.launch_scheduler(ctx)
    workers = await backend.launch_workers(ctx, n)
    assert await backend.scheduler_address(ctx, scheduler) and len(workers) == n
    launch_http, launch_calls = fake.http_requests - http, len(fake.calls()) - calls
    by_method = Counter(c.id for c in fake.calls()[calls:])

    await asyncio.sleep(float(config.get("gcp.poll-interval")) + 0.1)  # as after a while of running
    http, calls = fake.http_requests, len(fake.calls())
    running = {i.id: i for i in [scheduler, *workers]}
    running.update({i.id: i for i in await backend.describe(ctx)})
    await backend.stop_instances(ctx, list(running.values()))
    await backend.cleanup(ctx)
    assert not fake.labelled("coiled-lab-cluster", cluster_id)
    return launch_http, fake.http_requests - http, launch_calls, len(fake.calls()) - calls, by_method


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[1, 10, 50, 1000])
    args = parser.parse_args()

    from emulated_gcp import use_fake
    from tests.gcp.fakegcp import FakeGCP

    fake = FakeGCP()
    work = Path(tempfile.mkdtemp(prefix="coiled-lab-bench-gcp-"))
    use_fake(fake, work)
    import dask.config

    dask.config.refresh()
    dask.config.set({"coiled-lab.gcp.region": REGION, "coiled-lab.gcp.poll-interval": 0.5,
                     "coiled-lab.gcp.subnet-cidr": "10.200.0.0/16",  # nothing boots: any range
                     # nothing connects either: no address to learn for "me"
                     "coiled-lab.cluster.allow-ingress-from": "198.51.100.0/24",
                     **{f"coiled-lab.gcp.endpoints.{s}": fake.url
                        for s in ("compute", "logging", "iam", "resourcemanager")}})
    from coiled_lab.cli import main as cli

    with open(os.devnull, "w") as quiet:
        stdout, sys.stdout = sys.stdout, quiet
        try:
            assert cli(["setup", "gcp", "--region", REGION]) == 0
        finally:
            sys.stdout = stdout

    print(f"{'N':>5} {'launch':>7} {'stop':>5} {'(calls)':>11} {'seconds':>8}   launch requests by method")
    first_type = dask.config.get("coiled-lab.gcp.worker-vm-types")[0]
    for n, out_of_stock in [*((n, None) for n in args.sizes), (10, first_type)]:
        if out_of_stock:
            fake.exhaust(out_of_stock)
        start = time.perf_counter()
        launch, stop, launch_calls, stop_calls, by_method = asyncio.run(coiled_lab_requests(n, work / "state", fake))
        elapsed = time.perf_counter() - start
        fake.reset()
        methods = ", ".join(f"{m.split('.', 1)[1]} {c}" for m, c in sorted(by_method.items()))
        label = f"{n}*" if out_of_stock else str(n)
        print(f"{label:>5} {launch:>7} {stop:>5} {f'{launch_calls}/{stop_calls}':>11} {elapsed:>8.1f}   {methods}",
              flush=True)
    print("launch/stop: API requests that reached the endpoint over HTTP (a batch is one); calls: API calls "
          f"served (each batched delete counted); plus {fake.token_requests} access token request(s) in all. "
          f"Target: launch <= 15, stop <= 3 at any N. *: {first_type} out of stock in every zone.")
    fake.close()


if __name__ == "__main__":
    main()
