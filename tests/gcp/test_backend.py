"""The GCP backend's requests, read at the fake: machine choice, GPUs, Spot, the startup
script; the pricing contract; logs read in one entries.list however many pages."""

from __future__ import annotations

import asyncio
import base64
import gzip
import io
import json
import tarfile

import pytest

from coiled_lab.backends.base import ClusterContext
from coiled_lab.backends.gcp import GCPBackend
from coiled_lab.spec import ClusterSpecError, parse_spec
from coiled_lab.tls import TLSMaterial

from .conftest import labelled


def context(state_dir, cluster_id: str, **spec) -> ClusterContext:
    directory = state_dir / "clusters" / cluster_id
    directory.mkdir(parents=True)
    return ClusterContext(id=cluster_id, name=f"t-{cluster_id}",
                          spec=parse_spec({"backend": "gcp", "package_sync": False, **spec}),
                          tls=TLSMaterial.generate(cluster_id), directory=directory)


async def launch(backend: GCPBackend, ctx: ClusterContext, workers: int) -> None:
    ctx.state = await backend.ensure_network(ctx)
    await backend.describe(ctx)
    await backend.launch_scheduler(ctx)
    await backend.launch_workers(ctx, workers)


def startup_archive(script: str) -> dict[str, bytes]:
    encoded = script.split("<<'COILED_LAB_ARCHIVE'")[1].split("\nCOILED_LAB_ARCHIVE")[0]
    data = gzip.decompress(base64.b64decode(encoded.split("\n", 1)[1]))
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        return {m.name: tar.extractfile(m).read() for m in tar.getmembers()}


def test_gpu_workers_get_attached_gpus_the_gpu_image_and_no_live_migration(network, fake, state_dir, gcp_env):
    backend = GCPBackend()
    ctx = context(state_dir, "90a000000001", n_workers=2, worker_gpu=1, spot_policy="spot")
    asyncio.run(launch(backend, ctx, 2))
    try:
        (bulk,) = [c.body for c in fake.calls("compute.regionInstances.bulkInsert")
                   if c.body["instanceProperties"]["labels"]["coiled-lab-cluster"] == ctx.id]
        props = bulk["instanceProperties"]
        assert int(bulk["count"]) == 2 and bulk["namePattern"].endswith("-####")
        # The smallest fit: an N1 machine with one T4 attached (before g2-standard-4's built-in L4).
        assert props["machineType"] == "n1-standard-4"
        assert props["guestAccelerators"] == [{"acceleratorType": "nvidia-tesla-t4", "acceleratorCount": 1}]
        assert props["scheduling"] == {"onHostMaintenance": "TERMINATE", "automaticRestart": False,
                                       "provisioningModel": "SPOT", "instanceTerminationAction": "DELETE"}
        image = props["disks"][0]["initializeParams"]["sourceImage"]
        assert "/projects/deeplearning-platform-release/global/images/common-cu123" in image
        config = json.loads(startup_archive(props["metadata"]["items"][0]["value"])["config.json"])
        assert config["gpu"] is True and config["cloud"] == "gcp"
        # The scheduler is an ordinary VM: no GPU, the CPU image, never Spot.
        (scheduler,) = labelled(fake, ctx.id, "scheduler")
        assert "guestAccelerators" not in scheduler and scheduler["scheduling"]["provisioningModel"] == "STANDARD"
        assert "debian-cloud" in scheduler["disks"][0]["initializeParams"]["sourceImage"]
        workers = asyncio.run(backend.describe(ctx))
        assert {w.role for w in workers} == {"scheduler", "worker"} and len(workers) == 3
        assert all(w.spot for w in workers if w.role == "worker")
    finally:
        asyncio.run(backend.cleanup(ctx))
    assert not labelled(fake, ctx.id, alive=False)


def test_startup_script_carries_the_bootstrap_and_no_credentials(network, fake, state_dir, gcp_env):
    backend = GCPBackend()
    ctx = context(state_dir, "90a000000002", n_workers=1)
    asyncio.run(launch(backend, ctx, 1))
    try:
        (scheduler,) = labelled(fake, ctx.id, "scheduler")
        script = scheduler["metadata"]["items"][0]["value"]
        assert script.startswith("#!/bin/sh") and "trap end EXIT" in script  # it deletes itself, else powers off
        files = startup_archive(script)
        assert {"coiled_lab/bootstrap/vm.py", "coiled_lab/bootstrap/gce.py", "coiled_lab/bootstrap/cloudlogging.py",
                "config.json"} <= set(files)
        config = json.loads(files["config.json"])
        assert (config["project"], config["log_name"], config["logging_endpoint"]) == \
            ("coiled-lab-test", "coiled-lab", fake.url)
        everything = script.encode() + b"".join(files.values())
        key = json.loads(gcp_env.read_text())
        for secret in (key["private_key"], key["private_key_id"], key["client_email"], str(gcp_env)):
            assert secret.encode() not in everything
        assert scheduler["serviceAccounts"] == [{"email": "coiled-lab-vm@coiled-lab-test.iam.gserviceaccount.com",
                                                 "scopes": ["https://www.googleapis.com/auth/logging.write",
                                                            "https://www.googleapis.com/auth/compute"]}]
    finally:
        asyncio.run(backend.cleanup(ctx))


def test_price_inputs_follow_the_pricing_contract(network, gcp_env):
    backend = GCPBackend()
    inputs = asyncio.run(backend.price_inputs(parse_spec({"backend": "gcp", "n_workers": 3})))
    assert inputs == {
        "region": "us-central1", "scheduler_type": "e2-standard-2", "worker_type": "e2-standard-4",
        "scheduler_machine": {"name": "e2-standard-2", "vcpus": 2, "memory_gib": 8.0, "gpus": 0, "gpu_type": None},
        "worker_machine": {"name": "e2-standard-4", "vcpus": 4, "memory_gib": 16.0, "gpus": 0, "gpu_type": None},
        "spot_price": None, "volume_gb": 50, "volume_type": "pd-balanced",
    }
    sized = asyncio.run(backend.price_inputs(parse_spec({"backend": "gcp", "worker_cpu": 8, "worker_memory": "31GiB"})))
    assert sized["worker_type"] == "e2-standard-8"  # 8 vCPUs, 32 GiB: the smallest fit, cheaper than n2-standard-8 (snapshot prices)
    with pytest.raises(ClusterSpecError) as info:
        asyncio.run(backend.price_inputs(parse_spec({"backend": "gcp", "worker_vm_types": ["m6i.xlarge"]})))
    assert info.value.field == "worker_vm_types" and "m6i.xlarge" in str(info.value)


@pytest.mark.slow
def test_logs_are_one_entries_list_with_pages_and_a_time_filter(gcp_control, emulator, fake):
    cluster = gcp_control.run(gcp_control.create({"backend": "gcp", "n_workers": 1}))
    assert gcp_control.run(gcp_control.wait(cluster["id"], timeout=120))["status"] == "running"
    everything = gcp_control.run(gcp_control.logs(cluster["id"], limit=None))
    fake.page_size = 7
    try:
        before = fake.count("logging.entries.list")
        again = gcp_control.run(gcp_control.logs(cluster["id"], limit=None))
        pages = fake.count("logging.entries.list") - before
        later = [r for r in again if r["time"] >= everything[len(everything) // 2]["time"]]
        since = gcp_control.run(gcp_control.logs(cluster["id"], since=later[0]["time"], limit=None))
    finally:
        fake.page_size = 1000
    assert len(everything) > 14 and pages == -(-len(again) // 7)  # every page, followed by its token
    assert {(r["instance"], r["message"]) for r in everything} <= {(r["instance"], r["message"]) for r in again}
    # An entry is stamped when its line is shipped, never before the line's own time: every
    # record from ``since`` on is there, and the earlier half is not.
    key = lambda r: (r["instance"], r["message"])  # noqa: E731
    assert {key(r) for r in again if r["time"] >= later[0]["time"]} <= {key(r) for r in since}
    # (Lines shipped after ``again`` was read may be there too: only ``again``'s are compared.)
    assert {key(r) for r in since} & {key(r) for r in again} < {key(r) for r in again}
    (request,) = [c.body for c in fake.calls("logging.entries.list")[-1:]]
    assert f'labels."coiled-lab-cluster"="{cluster["id"]}"' in request["filter"] and "timestamp>=" in request["filter"]
    gcp_control.run(gcp_control.stop(cluster["id"]))
    gcp_control.run(gcp_control.wait(cluster["id"], ("stopped",), 60))
