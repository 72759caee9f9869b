"""Environment sync on bare VMs: a kernel's environment (not the server's) reaches the
workers, local code included, and is built once into the bucket; later clusters unpack it
without touching the package index, and a deleted archive is built again."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import dask.config
import pytest
from distributed import Client

from coiled_lab import Cluster

from ..conftest import wait_for
from .conftest import REGION

pytestmark = pytest.mark.slow

PROJECT = """[build-system]
requires = ["setuptools"]
build-backend = "setuptools.build_meta"
[project]
name = "mylocal"
version = "0.3"
[tool.setuptools]
packages = ["mylocal"]
"""


@pytest.fixture
def kernel(tmp_path):
    """A kernel's environment unlike the server's: a package the server lacks (tabulate),
    an editable local package, and a module and a secret in its working directory."""
    venv, work = tmp_path / "kernel", tmp_path / "notebooks"
    (tmp_path / "mylocal" / "mylocal").mkdir(parents=True)
    (tmp_path / "mylocal" / "pyproject.toml").write_text(PROJECT)
    (tmp_path / "mylocal" / "mylocal" / "__init__.py").write_text("VALUE = 42\n")
    work.mkdir()
    (work / "mymodule.py").write_text("def where():\n    return __file__\n")
    (work / ".env").write_text("API_KEY=never-shipped\n")
    subprocess.run(["uv", "venv", "-q", str(venv)], check=True)
    versions = [f"{n}=={metadata.version(n)}" for n in ("dask", "distributed", "pydantic", "pyyaml", "pathspec")]
    subprocess.run(["uv", "pip", "install", "-q", "--python", str(venv / "bin" / "python"), *versions, "tabulate",
                    "-e", str(tmp_path / "mylocal")], check=True)
    take = "import json; from coiled_lab.environment import snapshot; print(json.dumps(snapshot('the kernel').to_json()))"
    source = str(Path(sys.modules["coiled_lab"].__path__[0]).parent)  # coiled-lab itself is never synced
    out = subprocess.run([str(venv / "bin" / "python"), "-c", take], cwd=work, capture_output=True, text=True,
                         env={**os.environ, "PATH": f"{Path(shutil.which('uv')).parent}:/usr/bin:/bin",
                              "PYTHONPATH": source})
    assert out.returncode == 0, out.stderr[-2000:]
    return json.loads(out.stdout)


def _check_on_a_worker(client: Client) -> dict:
    def probe():
        import os
        from importlib import metadata

        import mylocal
        import mymodule

        return {"tabulate": metadata.version("tabulate"), "mylocal": mylocal.VALUE, "mymodule": mymodule.where(),
                "env_file": any(os.path.exists(os.path.join(p, ".env")) for p in ("", *os.sys.path) if p)}

    return client.submit(probe, pure=False).result(timeout=60)


def test_the_kernels_environment_is_synced_and_built_once(aws_control, emulator, moto, vm_network, kernel):
    s3 = moto.client("s3", REGION)  # the bucket `setup aws` made
    bucket = f"coiled-lab-envs-{moto.client('sts', REGION).get_caller_identity()['Account']}-{REGION}"
    manager = aws_control.manager

    def start(environment) -> dict:
        with dask.config.set({"coiled-lab.cluster.package-sync": True}):
            record = aws_control.run(aws_control.create({"backend": "aws", "n_workers": 1}, environment))
        final = aws_control.run(aws_control.wait(record["id"], timeout=420))
        assert final["status"] == "running", final.get("message")
        return final

    def stop(record: dict) -> None:
        aws_control.run(aws_control.stop(record["id"]))
        aws_control.run(aws_control.wait(record["id"], ("stopped",), timeout=90))

    def phases(record: dict) -> list[str]:
        return [p["name"] for p in manager.store.get_cluster(record["id"]).state["boot"]["phases"]]

    archive = None
    first = start(kernel)
    try:
        env_hash = manager.store.get_cluster(first["id"]).state["environment"]
        archive = f"envs/{env_hash}.tar.gz"
        [told] = [n for n in aws_control.run(manager.notifications(first["id"])) if n["kind"] == "software"]
        assert told["message"].startswith("software: synced from the kernel (") and "1 local" in told["message"]
        with Cluster(name=first["name"], control=aws_control) as cluster, Client(cluster) as client:
            found = _check_on_a_worker(client)
        assert found["tabulate"] and found["mylocal"] == 42 and found["mymodule"].endswith("/code/mymodule.py")
        assert found["env_file"] is False
        assert "packages" in phases(first)  # the first cluster installed it
        wait_for(lambda: s3.list_objects_v2(Bucket=bucket, Prefix=archive).get("KeyCount"), timeout=180,
                 what="the scheduler's upload of the built environment")
    finally:
        stop(first)

    vm_network.reset_counters()
    second = start(env_hash)  # the same environment, named by its hash
    try:
        assert phases(second) == ["environment", "dask"]  # unpacked: no uv, no venv, no installs
        index = {h: n for h, n in {**vm_network.downloaded(), **vm_network.from_cache()}.items()
                 if not h.startswith("aws.emulator")}
        assert not index, f"a cluster of a built environment fetched from the package index: {index}"
        with Cluster(name=second["name"], control=aws_control) as cluster, Client(cluster) as client:
            assert _check_on_a_worker(client)["mylocal"] == 42
    finally:
        stop(second)

    s3.delete_object(Bucket=bucket, Key=archive)  # gone (expired, deleted): built again, never fatal
    third = start(env_hash)
    try:
        assert "packages" in phases(third)
        wait_for(lambda: s3.list_objects_v2(Bucket=bucket, Prefix=archive).get("KeyCount"), timeout=180,
                 what="the archive built again")
    finally:
        stop(third)
