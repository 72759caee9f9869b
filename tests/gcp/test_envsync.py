"""Environment sync on bare GCE VMs (as tests/aws/test_envsync.py on EC2): a kernel's
environment reaches the workers, local code included, through the project's bucket, read
and written with the VMs' service account tokens; it is built once, later clusters mount
it without touching the package index, and a deleted archive is built again."""

from __future__ import annotations

import pytest
from distributed import Client

from coiled_lab import Cluster
from coiled_lab.backends.envstore import ARCHIVE

from ..conftest import wait_for
from ..envsync import Clusters, kernel_environment, probe_worker
from .fakegcp import PROJECT

pytestmark = pytest.mark.slow

BUCKET = f"coiled-lab-envs-{PROJECT}"
VM_ACCOUNT = f"coiled-lab-vm@{PROJECT}.iam.gserviceaccount.com"


def test_the_kernels_environment_is_synced_and_built_once(gcp_control, emulator, fake, vm_network, tmp_path):
    objects = fake.objects[BUCKET]  # the bucket `setup gcp` made
    clusters = Clusters(gcp_control, "gcp")

    def storage_calls(since: int) -> list:
        return [c for c in fake.calls_log[since:] if c.id.startswith("storage.objects.")]

    calls_before = len(fake.calls_log)
    first = clusters.start(kernel_environment(tmp_path))
    try:
        env_hash = clusters.environment_of(first)
        archive = ARCHIVE.format(hash=env_hash)
        assert f"inputs/{env_hash}.tar" in objects  # put by this server before the first VM booted
        line = clusters.software_line(first)
        assert line.startswith("software: synced from the kernel (") and "1 local" in line, line
        with Cluster(name=first["name"], control=gcp_control) as cluster, Client(cluster) as client:
            found = probe_worker(client)
        assert found["tabulate"] and found["mylocal"] == 42 and found["mymodule"].endswith("/code/mymodule.py")
        assert found["env_file"] is False
        assert "packages" in clusters.phases(first)  # the first cluster installed it
        wait_for(lambda: archive in objects, timeout=180, what="the scheduler's upload of the built environment")
        assert gcp_control.run(gcp_control.environment(env_hash, "gcp")) == {"hash": env_hash, "backend": "gcp",
                                                                             "built": True}
    finally:
        clusters.stop(first)
    # The VMs read and wrote with their own service account's tokens, refused nothing.
    vm_calls = [c for c in storage_calls(calls_before) if c.token not in fake.tokens]
    assert vm_calls and {c.token for c in vm_calls} <= emulator.tokens()
    assert {c.query.get("name") for c in vm_calls if c.id == "storage.objects.insert"} == {archive}
    assert not [r for r in fake.storage_refused if r[0] == VM_ACCOUNT and env_hash in r[2]]

    vm_network.reset_counters()
    second = clusters.start(env_hash)  # the same environment, named by its hash
    try:
        assert clusters.phases(second) == ["environment", "dask"]  # mounted: no uv, no venv, no installs
        index = {h: n for h, n in {**vm_network.downloaded(), **vm_network.from_cache()}.items()
                 if not h.startswith("gcp.emulator")}
        assert not index, f"a cluster of a built environment fetched from the package index: {index}"
        with Cluster(name=second["name"], control=gcp_control) as cluster, Client(cluster) as client:
            assert probe_worker(client)["mylocal"] == 42
    finally:
        clusters.stop(second)

    del objects[archive]  # gone (expired, deleted): built again, never fatal
    third = clusters.start(env_hash)
    try:
        assert "packages" in clusters.phases(third)
        wait_for(lambda: archive in objects, timeout=180, what="the image built again")
    finally:
        clusters.stop(third)
        objects.pop(archive, None)
        objects.pop(f"inputs/{env_hash}.tar", None)
