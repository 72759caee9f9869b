"""A GCE VM that ends leaves nothing billed: it deletes itself, disk and all.

Launched by the backend into the fake (no VM boots here): each new VM's own IAM policy
grants the VMs' service account the custom role ``setup gcp`` made, and nothing else. The
VM's side is its real startup-script, run by ``/bin/sh`` on this machine with the image's
python3 replaced by one that cannot start (a failed boot), a GCE metadata server for that VM
whose tokens the fake takes as the service account's, and ``shutdown`` recording that it was
asked. A cluster with a ``max_lifetime`` also gets GCE's own deadline.
"""

from __future__ import annotations

import asyncio
import subprocess
import time
from pathlib import Path
from typing import Any

import dask.config
import pytest

from coiled_lab.backends.gcp import GCPBackend
from coiled_lab.backends.gcp.instances import LOG_SCOPE, SELF_DELETE_ROLE_ID

from ..conftest import wait_for
from ..vm.emulator import BROKEN_PYTHON
from .conftest import labelled
from .emulator import MetadataServer
from .fakegcp import PROJECT
from .test_backend import context

VM_ACCOUNT = f"coiled-lab-vm@{PROJECT}.iam.gserviceaccount.com"


@pytest.fixture
def launch(network, fake, state_dir):
    """``launch(cluster_id, **spec)``: a cluster's scheduler launched by the backend into the
    fake, as (backend, context, the fake's view of the VM); what is left is deleted at the end."""
    backend = GCPBackend()
    contexts = []

    def scheduler(cluster_id: str, notify=None, **spec) -> tuple[GCPBackend, Any, dict]:
        ctx = context(state_dir, cluster_id, **spec)
        if notify:
            ctx.notify = notify
        contexts.append(ctx)

        async def go() -> None:
            ctx.state = await backend.ensure_network(ctx)
            await backend.describe(ctx)
            await backend.launch_scheduler(ctx)

        asyncio.run(go())
        (vm,) = labelled(fake, ctx.id, "scheduler")
        return backend, ctx, vm

    yield scheduler
    for ctx in contexts:
        asyncio.run(backend.cleanup(ctx))
        assert not labelled(fake, ctx.id, alive=False)


def run_startup_script(vm: dict, fake, tmp_path: Path) -> list[str]:
    """The VM's startup-script as GCE's guest agent runs it, with a python3 that cannot start."""
    script = next(i["value"] for i in vm["metadata"]["items"] if i["key"] == "startup-script")
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "python3").write_bytes(BROKEN_PYTHON)
    (bin_dir / "shutdown").write_text('#!/bin/sh\necho "shutdown $*"\n')
    for tool in bin_dir.iterdir():
        tool.chmod(0o755)
    (tmp_path / "tmp").mkdir()
    metadata = MetadataServer(vm, fake.project, fake.accept_token)
    try:
        done = subprocess.run(["/bin/sh", "-c", script], capture_output=True, text=True, timeout=120, env={
            "PATH": f"{bin_dir}:/usr/bin:/bin", "HOME": str(tmp_path), "TMPDIR": str(tmp_path / "tmp"),
            "LANG": "C.UTF-8", "GCE_METADATA_HOST": metadata.host})
    finally:
        metadata.close()
    return done.stdout.splitlines()


def disks(fake, vm: dict) -> list[str]:
    return [d["name"] for d in fake.disks.values() if vm["selfLink"] in d["users"]]


def test_a_vm_whose_boot_fails_tells_why_then_deletes_itself_and_its_disk(launch, fake, tmp_path):
    backend, ctx, vm = launch("5e1fde1e7e01")
    zone = vm["zone"].rsplit("/", 1)[-1]
    # Its own policy lets the VMs' service account delete this VM, and do nothing else.
    assert fake.instance_policies[(zone, vm["name"])]["bindings"] == [
        {"role": f"projects/{PROJECT}/roles/{SELF_DELETE_ROLE_ID}", "members": [f"serviceAccount:{VM_ACCOUNT}"]}]
    assert fake.roles[f"projects/{PROJECT}/roles/{SELF_DELETE_ROLE_ID}"]["includedPermissions"] == [
        "compute.instances.delete"]
    assert disks(fake, vm) == [vm["name"]]

    console = run_startup_script(vm, fake, tmp_path)
    assert "Fatal Python error: init_fs_encoding" in "\n".join(console)
    assert console[-2:] == ["coiled-lab: this VM deletes itself", "shutdown -h now"]
    # Gone, not stopped, and its disk with it; deleted with the VM's own token.
    assert (zone, vm["name"]) not in fake.instances and not disks(fake, vm)
    (deleted,) = [c for c in fake.calls("compute.instances.delete") if c.path.endswith(f"/{vm['name']}")]
    assert fake.vm_tokens[deleted.token] == (VM_ACCOUNT, tuple(vm["serviceAccounts"][0]["scopes"]))
    # Why it ended outlives it, in Cloud Logging, where the cluster's logs are read.
    records = asyncio.run(backend.logs(ctx))
    assert any("Fatal Python error: init_fs_encoding" in r.message for r in records if r.role == "scheduler")
    assert any("cannot run the bootstrap" in r.message and r.instance == vm["name"] for r in records)


def test_without_the_grant_a_vm_may_not_delete_itself_and_powers_off(launch, fake, tmp_path, monkeypatch):
    backend, ctx, vm = launch("5e1fde1e7e02")
    ctx.instances = asyncio.run(backend.describe(ctx))
    zone = vm["zone"].rsplit("/", 1)[-1]
    fake.instance_policies.pop((zone, vm["name"]))  # as when the grant was refused at launch
    fake.fail("logging.entries.write", 503)  # and Cloud Logging did not take its why either

    console = run_startup_script(vm, fake, tmp_path)
    assert console[-2:] == ["coiled-lab: this VM could not delete itself; it powers off and coiled-lab deletes it",
                            "shutdown -h now"]
    assert (zone, vm["name"]) in fake.instances and disks(fake, vm)
    # Its why is then read from its serial port, while the stopped VM is kept.
    monkeypatch.setattr(fake, "serial_output", lambda zone, name: "\n".join(console) if name == vm["name"] else None)
    records = asyncio.run(backend.logs(ctx))
    assert any("Fatal Python error: init_fs_encoding" in r.message and r.instance == vm["name"] for r in records)
    (refused,) = [c for c in fake.calls("compute.instances.delete") if c.path.endswith(f"/{vm['name']}")]
    assert refused.token in fake.vm_tokens
    # GCE's answer to that token: 403 naming the permission, as it is to a token without
    # the Compute scope, even on a VM that grants it.
    _, _, other = launch("5e1fde1e7e03")
    fake.accept_token("vm-logs-only", VM_ACCOUNT, [LOG_SCOPE])
    for token, target, needle in ((refused.token, vm, "Required 'compute.instances.delete' permission"),
                                  ("vm-logs-only", other, "insufficient authentication scopes")):
        status, answer = fake.dispatch("DELETE", f"/compute/v1/projects/{PROJECT}/zones/{zone}/instances/"
                                                 f"{target['name']}", {}, None, {"authorization": f"Bearer {token}"})
        assert status == 403 and needle in answer["error"]["message"]
    # Powered off, it is deleted by the backend when it sees it (the second look).
    fake.set_status(zone, vm["name"], "TERMINATED")
    for _ in range(2):
        asyncio.run(backend.describe(ctx))
        time.sleep(float(dask.config.get("coiled-lab.gcp.poll-interval")))
    assert (zone, vm["name"]) not in fake.instances and not disks(fake, vm)


def test_a_launch_refused_the_grant_still_runs_and_says_so(launch, fake):
    fake.fail("compute.instances.setIamPolicy", 403)
    told = []
    _, _, vm = launch("5e1fde1e7e04", notify=lambda kind, message, level="warning": told.append((kind, message)))
    assert vm["status"] == "RUNNING"
    [(kind, message)] = told
    assert kind == "self-delete" and "cannot delete themselves" in message and "setup gcp" in message


def test_gce_deletes_a_vm_of_a_cluster_at_its_max_lifetime(launch, fake):
    with dask.config.set({"coiled-lab.gcp.start-timeout": 0}):  # GCE's deadline: max_lifetime + start timeout
        _, _, vm = launch("5e1fde1e7e05", max_lifetime="30s")
    (insert,) = [c.body for c in fake.calls("compute.instances.insert") if c.body["name"] == vm["name"]]
    assert insert["scheduling"]["maxRunDuration"] == {"seconds": "30"}
    assert insert["scheduling"]["instanceTerminationAction"] == "DELETE"
    zone = vm["zone"].rsplit("/", 1)[-1]
    assert (zone, vm["name"]) in fake.instances
    wait_for(lambda: (zone, vm["name"]) not in fake.instances, timeout=40, interval=0.5, what="GCE to delete the VM")
    assert not disks(fake, vm)
