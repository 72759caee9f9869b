"""What the environment-sync tests of both clouds share: a kernel's environment unlike the
server's, a probe of what a worker has, and the clusters they start and stop."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from importlib import metadata
from pathlib import Path
from typing import Any

import dask.config
from distributed import Client

LOCAL_PROJECT = """[build-system]
requires = ["setuptools"]
build-backend = "setuptools.build_meta"
[project]
name = "mylocal"
version = "0.3"
[tool.setuptools]
packages = ["mylocal"]
"""


def kernel_environment(tmp_path: Path) -> dict[str, Any]:
    """A kernel's environment unlike the server's, as it sends it: a package the server
    lacks (tabulate), an editable local package (mylocal), and a module and a secret in its
    working directory. The kernel is a uv venv (no pip: its editable package is built with uv)."""
    venv, work = tmp_path / "kernel", tmp_path / "notebooks"
    (tmp_path / "mylocal" / "mylocal").mkdir(parents=True)
    (tmp_path / "mylocal" / "pyproject.toml").write_text(LOCAL_PROJECT)
    (tmp_path / "mylocal" / "mylocal" / "__init__.py").write_text("VALUE = 42\n")
    work.mkdir()
    (work / "mymodule.py").write_text("def where():\n    return __file__\n")
    (work / ".env").write_text("API_KEY=never-shipped\n")
    subprocess.run(["uv", "venv", "-q", str(venv)], check=True)
    versions = [f"{n}=={metadata.version(n)}" for n in ("dask", "distributed", "pydantic", "pyyaml", "pathspec")]
    subprocess.run(["uv", "pip", "install", "-q", "--python", str(venv / "bin" / "python"), *versions, "tabulate",
                    "-e", str(tmp_path / "mylocal")], check=True)
    return snapshot_of(venv / "bin" / "python", work)


def snapshot_of(python: Path, cwd: Path) -> dict[str, Any]:
    """The environment ``python``'s kernel would send from ``cwd`` (coiled-lab imported from
    this checkout: it is never synced itself)."""
    take = "import json; from coiled_lab.environment import snapshot; print(json.dumps(snapshot('the kernel').to_json()))"
    source = str(Path(sys.modules["coiled_lab"].__path__[0]).parent)
    out = subprocess.run([str(python), "-c", take], cwd=cwd, capture_output=True, text=True,
                         env={**os.environ, "PATH": f"{Path(shutil.which('uv')).parent}:/usr/bin:/bin",
                              "PYTHONPATH": source})
    assert out.returncode == 0, out.stderr[-2000:]
    return json.loads(out.stdout)


def probe_worker(client: Client) -> dict[str, Any]:
    """What a worker has of the kernel's environment."""
    def probe():
        import os
        from importlib import metadata

        import mylocal
        import mymodule

        return {"tabulate": metadata.version("tabulate"), "mylocal": mylocal.VALUE, "mymodule": mymodule.where(),
                "env_file": any(os.path.exists(os.path.join(p, ".env")) for p in ("", *os.sys.path) if p)}

    return client.submit(probe, pure=False).result(timeout=60)


class Clusters:
    """Clusters of one syncing environment on ``backend``, through ``control``."""

    def __init__(self, control: Any, backend: str):
        self.control, self.backend = control, backend

    def start(self, environment: Any) -> dict[str, Any]:
        with dask.config.set({"coiled-lab.cluster.package-sync": True}):
            record = self.control.run(self.control.create({"backend": self.backend, "n_workers": 1}, environment))
        final = self.control.run(self.control.wait(record["id"], timeout=420))
        assert final["status"] == "running", final.get("message")
        return final

    def stop(self, record: dict[str, Any]) -> None:
        self.control.run(self.control.stop(record["id"]))
        self.control.run(self.control.wait(record["id"], ("stopped",), timeout=90))

    def phases(self, record: dict[str, Any]) -> list[str]:
        return [p["name"] for p in self.control.manager.store.get_cluster(record["id"]).state["boot"]["phases"]]

    def environment_of(self, record: dict[str, Any]) -> str:
        return self.control.manager.store.get_cluster(record["id"]).state["environment"]

    def software_line(self, record: dict[str, Any]) -> str:
        [told] = [n for n in self.control.run(self.control.manager.notifications(record["id"]))
                  if n["kind"] == "software"]
        return told["message"]
