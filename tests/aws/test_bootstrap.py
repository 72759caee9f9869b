"""The VM side on its own: the log shipper against CloudWatch (moto), the IMDSv2 client,
package_sync, and the dask command lines."""

from __future__ import annotations

import time
from pathlib import Path

import boto3
import pytest

from coiled_lab.bootstrap import packages, vm
from coiled_lab.bootstrap.logship import MAX_BATCH_EVENTS, LogShipper

from ..conftest import wait_for
from .emulator import Identity, MetadataServer

REGION = "eu-central-1"  # a region of its own: this test makes and removes log groups


def events(group: str, stream: str) -> list[dict]:
    logs = boto3.client("logs", region_name=REGION)
    out, token = [], None
    while True:
        page = logs.get_log_events(logGroupName=group, logStreamName=stream, startFromHead=True,
                                   **({"nextToken": token} if token else {}))
        out += page["events"]
        if page["nextForwardToken"] == token:
            return out
        token = page["nextForwardToken"]


def test_lines_arrive_in_order_in_bounded_batches_and_survive_an_outage(aws_env, proxy):
    group = f"shipper-{time.monotonic_ns()}"
    logs = boto3.client("logs", region_name=REGION)
    shipper = LogShipper(lambda: boto3.client("logs", region_name=REGION), group, "c1/worker-i-1",
                         max_lines=12_000, interval=0.1, max_backoff=0.2)
    before = len(proxy.calls("PutLogEvents"))
    # More lines than the queue holds: the oldest go, and the stream will say how many.
    for i in range(15_000):
        shipper.write(f"line {i}")
    # The group does not exist yet: CloudWatch refuses, the lines wait, and they are sent
    # once it does.
    shipper.start()
    wait_for(lambda: any(c.params["logGroupName"] == group for c in proxy.calls("CreateLogStream")),
             what="a first attempt")
    logs.create_log_group(logGroupName=group)
    shipper.close(timeout=30)

    received = [e["message"] for e in events(group, "c1/worker-i-1")]
    assert received[0] == "coiled-lab: 3000 log lines were dropped while CloudWatch was unreachable"
    assert received[1:] == [f"line {i}" for i in range(3000, 15_000)]
    batches = [c.params["logEvents"] for c in proxy.calls("PutLogEvents")[before:]
               if c.params["logGroupName"] == group]
    assert all(len(b) <= MAX_BATCH_EVENTS for b in batches) and len(batches) >= 2
    stamps = [e["timestamp"] for b in batches for e in b]
    assert stamps == sorted(stamps)


def test_metadata_client_speaks_imdsv2_only():
    server = MetadataServer(Identity("i-0abc", "127.9.0.5", "us-east-1b", "m6i.large", "spot", "coiled-lab-instance"))
    try:
        me = vm.Metadata(server.url).identity()
        assert me == vm.Identity("i-0abc", "127.9.0.5", "us-east-1", "us-east-1b", "m6i.large", spot=True)
        import urllib.error
        import urllib.request

        with pytest.raises(urllib.error.HTTPError) as info:  # IMDSv1: no token, no answer
            urllib.request.urlopen(f"{server.url}/latest/meta-data/instance-id", timeout=2)
        assert info.value.code == 401
        assert vm.Metadata(server.url).get("spot/instance-action") is None
    finally:
        server.close()


def test_package_sync_pins_this_environment_and_names_what_it_cannot_install():
    pinned, skipped = packages.snapshot()
    import dask

    assert f"dask=={dask.__version__}" in pinned
    assert not any(p.lower().startswith(("pip==", "setuptools==")) for p in pinned)
    assert any(s.startswith("coiled-lab ") and "editable" in s for s in skipped)  # this checkout
    assert packages.missing([f"dask=={dask.__version__}", "dask==0.0.1", "no-such-package==1.0"]) == \
        ["dask==0.0.1", "no-such-package==1.0"]


def test_package_install_skips_what_is_there():
    import dask

    said, printed = [], []
    assert packages.install([f"dask=={dask.__version__}"], printed.append, lambda m, *_: said.append(m))
    assert said == ["package_sync: 1 of 1 packages already installed, installing 0"] and printed == []


def test_dask_command_lines():
    me = vm.Identity("i-0abc", "127.9.0.5", "us-east-1", "us-east-1b", "m6i.large", spot=False)
    base = {"scheduler_port": 8786, "dashboard_port": 8787, "scheduler_address": "tls://127.9.0.4:8786",
            "death_timeout": 60, "nanny": True, "gpu": False}
    work = Path("/w")
    scheduler = vm.dask_command({**base, "role": "scheduler"}, me, work)
    assert scheduler[2] == "distributed.cli.dask_scheduler"
    assert {"coiled_lab.bootstrap.lifetime", "coiled_lab.bootstrap.watchdog", "127.9.0.5:8787"} <= set(scheduler)
    worker = vm.dask_command({**base, "role": "worker"}, me, work)
    assert worker[2:5] == ["distributed.cli.dask_worker", "tls://127.9.0.4:8786", "--name"]
    assert worker[5] == "i-0abc" and "--nanny" in worker and "--death-timeout" in worker
    gpu = vm.dask_command({**base, "role": "worker", "gpu": True}, me, work)
    assert gpu[1:5] == ["-m", "dask", "cuda", "worker"] and "i-0abc" in gpu
