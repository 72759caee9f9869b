"""AWS API requests to launch and to stop a cluster of N workers: coiled-lab's AWS backend
versus dask-cloudprovider's ``EC2Cluster``, on the same moto server in the same run.

coiled-lab's calls are counted with botocore's event hooks (``before-call``: API calls as
the code makes them) and at the HTTP boundary (a proxy in front of moto: every request,
retries included). The backend is driven as the manager drives it: launch = network,
a look at what runs, the scheduler, every worker, the scheduler's address; stop = a look
at what runs (after its cached view has expired), terminate, clean up. Target: <= 15
requests to launch and <= 3 to stop, whatever N.

dask-cloudprovider is counted at the proxy. Its scheduler VM cannot boot on moto, so a
local ``dask scheduler`` is started on the scheduler's (loopback) address as soon as
moto answers its RunInstances; it is given ``security=False``, ``use_private_ip=True``,
the loopback subnet, moto's Amazon Linux image (it finds no Ubuntu one there) and
coiled-lab's security group (its own default-group path fails in
2025.9.0, and would open 8786-8787 to 0.0.0.0/0). Install it apart from the project's environment (it pins a newer
botocore)::

    python -m venv --system-site-packages /tmp/dcp-venv
    /tmp/dcp-venv/bin/pip install "dask-cloudprovider[aws]"
    /tmp/dcp-venv/bin/python benchmarks/aws_api_calls.py

Without it, the comparison column says why it is missing. No machine boots: nothing but
API calls is measured. Usage: python benchmarks/aws_api_calls.py [--sizes 1 10 50 1000]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import io
import logging
import os
import random
import re
import secrets
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

REGION = "us-east-1"


def start_moto() -> tuple[str, object]:
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.WARNING)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    return f"http://{host}:{port}", server


async def coiled_lab_calls(n: int, state_dir: Path, proxy) -> tuple[int, int, int, int]:
    """(API calls to launch, to stop, HTTP requests to launch, to stop) for N workers."""
    import boto3

    from coiled_lab import config
    from coiled_lab.backends.aws import AWSBackend
    from coiled_lab.backends.base import ClusterContext
    from coiled_lab.spec import parse_spec
    from coiled_lab.tls import TLSMaterial

    session = boto3.Session()
    calls: Counter = Counter()
    session.events.register("before-call", lambda event_name, **_: calls.update([event_name]))
    backend = AWSBackend(session)
    cluster_id = secrets.token_hex(6)
    directory = state_dir / "clusters" / cluster_id
    directory.mkdir(parents=True)
    ctx = ClusterContext(id=cluster_id, name=f"bench-{n}", spec=parse_spec({"backend": "aws", "n_workers": n}),
                         tls=TLSMaterial.generate(cluster_id), directory=directory)

    http = len(proxy.requests)
    ctx.state = await backend.ensure_network(ctx)
    await backend.describe(ctx)
    scheduler = await backend.launch_scheduler(ctx)
    workers = await backend.launch_workers(ctx, n)
    assert await backend.scheduler_address(ctx, scheduler) and len(workers) == n
    launch, launch_http = sum(calls.values()), len(proxy.requests) - http

    await asyncio.sleep(float(config.get("aws.poll-interval")) + 0.1)  # as after a while of running
    calls.clear()
    http = len(proxy.requests)
    running = {i.id: i for i in [scheduler, *workers]}
    running.update({i.id: i for i in await backend.describe(ctx)})
    await backend.stop_instances(ctx, list(running.values()))
    await backend.cleanup(ctx)
    return launch, sum(calls.values()), launch_http, len(proxy.requests) - http


def cloudprovider_calls(n: int, proxy, subnet: str, vpc: str, group: str, ami: str) -> tuple[int, int] | str:
    """(HTTP requests to launch, to close) of EC2Cluster, or why it could not run."""
    try:
        from dask_cloudprovider.aws import EC2Cluster
    except ImportError as exc:
        return f"not installed ({exc.name}); see this script's docstring"
    stand_ins: list[subprocess.Popen] = []

    def boot_scheduler(request, forward):
        """The first RunInstances is the scheduler's: serve a scheduler on its address."""
        if request.action != "RunInstances" or stand_ins:
            return None
        answer = forward(None)
        address = re.search(rb"<privateIpAddress>([\d.]+)</privateIpAddress>", answer.body).group(1).decode()
        stand_ins.append(subprocess.Popen(
            [sys.executable, "-m", "distributed.cli.dask_scheduler", "--host", address, "--port", "8786",
             "--no-dashboard"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        return answer

    proxy.add(boot_scheduler)
    try:
        with contextlib.redirect_stdout(io.StringIO()):  # it prints a line per machine
            before = len(proxy.requests)
            cluster = EC2Cluster(n_workers=n, region=REGION, vpc=vpc, subnet_id=subnet, security_groups=[group],
                                 use_private_ip=True, ami=ami, security=False, instance_type="m6i.xlarge",
                                 docker_image="daskdev/dask:latest", filesystem_size=40)
            launched = len(proxy.requests) - before
            before = len(proxy.requests)
            cluster.close()
        return launched, len(proxy.requests) - before
    except Exception as exc:  # noqa: BLE001 - report, do not hide, why the comparison failed
        return f"failed on moto: {type(exc).__name__}: {str(exc)[:120]}"
    finally:
        proxy.reset()
        for proc in stand_ins:
            proc.kill()
            proc.wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[1, 10, 50, 1000])
    args = parser.parse_args()

    from tests.aws.proxy import AWSProxy

    moto_url, server = start_moto()
    proxy = AWSProxy(moto_url).start()
    state_dir = Path(tempfile.mkdtemp(prefix="coiled-lab-bench-"))
    os.environ.update(AWS_ENDPOINT_URL=proxy.url, AWS_ACCESS_KEY_ID="AKIAFAKEFORBENCHMARK", AWS_DEFAULT_REGION=REGION,
                      AWS_SECRET_ACCESS_KEY="fake", AWS_EC2_METADATA_DISABLED="true",
                      DASK_COILED_LAB__STATE_DIR=str(state_dir))
    import dask.config

    from coiled_lab.cli import main as cli

    dask.config.refresh()
    # Nothing connects to these machines (moto gives them no public address): no "me" to learn either.
    dask.config.set({"coiled-lab.cluster.connect-via": "private",
                     "coiled-lab.cluster.allow-ingress-from": "198.51.100.0/24"})
    cidr = f"127.{random.randint(32, 250)}.0.0/16"  # moto hands out loopback addresses from it
    with open(os.devnull, "w") as quiet:
        stdout, sys.stdout = sys.stdout, quiet
        try:
            assert cli(["setup", "aws", "--region", REGION, "--vpc-cidr", cidr]) == 0
        finally:
            sys.stdout = stdout
    import boto3

    ec2 = boto3.client("ec2", region_name=REGION, endpoint_url=moto_url)
    vpc = ec2.describe_vpcs(Filters=[{"Name": "cidr", "Values": [cidr]}])["Vpcs"][0]["VpcId"]
    subnet = sorted(ec2.describe_subnets(Filters=[{"Name": "vpc-id", "Values": [vpc]}])["Subnets"],
                    key=lambda s: s["AvailabilityZone"])[0]["SubnetId"]
    group = ec2.describe_security_groups(Filters=[{"Name": "vpc-id", "Values": [vpc]},
                                                  {"Name": "group-name", "Values": ["coiled-lab-cluster"]}])
    group = group["SecurityGroups"][0]["GroupId"]
    ami = boto3.client("ssm", region_name=REGION, endpoint_url=moto_url).get_parameter(
        Name="/aws/service/ami-amazon-linux-latest/al2023-ami-kernel-default-x86_64")["Parameter"]["Value"]

    print(f"{'N':>5} {'launch':>7} {'stop':>5} {'(HTTP)':>9} {'seconds':>8}   dask-cloudprovider EC2Cluster (HTTP)")
    for n in args.sizes:
        start = time.perf_counter()
        launch, stop, launch_http, stop_http = asyncio.run(coiled_lab_calls(n, state_dir, proxy))
        elapsed = time.perf_counter() - start
        other = cloudprovider_calls(n, proxy, subnet, vpc, group, ami) if n <= 50 else "(not run at this size)"
        other_text = other if isinstance(other, str) else f"launch {other[0]}, close {other[1]}"
        print(f"{n:>5} {launch:>7} {stop:>5} {f'{launch_http}/{stop_http}':>9} {elapsed:>8.1f}   {other_text}",
              flush=True)
    print("launch/stop: API calls made by coiled-lab (botocore before-call); HTTP: requests that reached "
          "the endpoint, retries included. Target: launch <= 15, stop <= 3 at any N.")
    proxy.close()
    server.stop()


if __name__ == "__main__":
    main()
