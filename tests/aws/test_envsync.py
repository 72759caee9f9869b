"""Environment sync on bare VMs: a kernel's environment (not the server's) reaches the
workers, local code included, and is built once into the bucket; later clusters mount it
without touching the package index, and a damaged image is built again."""

from __future__ import annotations

import pytest
from distributed import Client

from coiled_lab import Cluster
from coiled_lab.backends.envstore import ARCHIVE

from ..conftest import wait_for
from ..envsync import Clusters, kernel_environment, probe_worker
from .conftest import REGION

pytestmark = pytest.mark.slow


def test_the_kernels_environment_is_synced_and_built_once(aws_control, emulator, moto, vm_network, tmp_path):
    s3 = moto.client("s3", REGION)  # the bucket `setup aws` made
    bucket = f"coiled-lab-envs-{moto.client('sts', REGION).get_caller_identity()['Account']}-{REGION}"
    clusters = Clusters(aws_control, "aws")

    def built(key: str) -> bool:
        return bool(s3.list_objects_v2(Bucket=bucket, Prefix=key).get("KeyCount"))

    first = clusters.start(kernel_environment(tmp_path))
    try:
        env_hash = clusters.environment_of(first)
        archive = ARCHIVE.format(hash=env_hash)
        assert built(f"inputs/{env_hash}.tar")  # put by this server before the first VM booted
        line = clusters.software_line(first)
        assert line.startswith("software: synced from the kernel (") and "1 local" in line, line
        with Cluster(name=first["name"], control=aws_control) as cluster, Client(cluster) as client:
            found = probe_worker(client)
        assert found["tabulate"] and found["mylocal"] == 42 and found["mymodule"].endswith("/code/mymodule.py")
        assert found["env_file"] is False
        assert "packages" in clusters.phases(first)  # the first cluster installed it
        wait_for(lambda: built(archive), timeout=180, what="the scheduler's upload of the built environment")
        assert aws_control.run(aws_control.environment(env_hash, "aws"))["built"] is True
    finally:
        clusters.stop(first)

    vm_network.reset_counters()
    second = clusters.start(env_hash)  # the same environment, named by its hash
    try:
        assert clusters.phases(second) == ["environment", "dask"]  # mounted: no uv, no venv, no installs
        index = {h: n for h, n in {**vm_network.downloaded(), **vm_network.from_cache()}.items()
                 if not h.startswith("aws.emulator")}
        assert not index, f"a cluster of a built environment fetched from the package index: {index}"
        with Cluster(name=second["name"], control=aws_control) as cluster, Client(cluster) as client:
            assert probe_worker(client)["mylocal"] == 42
    finally:
        clusters.stop(second)

    # Damaged (a truncated upload, say): the scheduler cannot mount it, installs, and replaces
    # it; never fatal. (The GCE test deletes it instead.)
    s3.put_object(Bucket=bucket, Key=archive, Body=b"not a squashfs image")
    third = clusters.start(env_hash)
    try:
        assert "packages" in clusters.phases(third)
        wait_for(lambda: s3.head_object(Bucket=bucket, Key=archive)["ContentLength"] > 1000, timeout=180,
                 what="the image built again")
    finally:
        clusters.stop(third)
