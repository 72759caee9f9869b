"""The environment package sync takes where the user's code runs (coiled_lab.environment)."""

from __future__ import annotations

import io
import json
import sys
import tarfile
import zipfile
from importlib import metadata
from pathlib import Path

import pytest

from coiled_lab.control.environments import SERVER, Environments
from coiled_lab.environment import Environment, code_archive, snapshot
from coiled_lab.spec import ClusterSpecError, parse_spec


def _dist(site: Path, name: str, version: str, files: dict[str, str], direct_url: dict | None = None,
          installer: str = "pip") -> metadata.Distribution:
    """An installed distribution in ``site``: its files, METADATA, RECORD, INSTALLER."""
    info = site / f"{name}-{version}.dist-info"
    info.mkdir(parents=True)
    for rel, text in files.items():
        (site / rel).parent.mkdir(parents=True, exist_ok=True)
        (site / rel).write_text(text)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n")
    (info / "WHEEL").write_text("Wheel-Version: 1.0\nTag: py3-none-any\n")
    (info / "INSTALLER").write_text(installer + "\n")
    if direct_url:
        (info / "direct_url.json").write_text(json.dumps(direct_url))
    rows = [*files, *(f"{info.name}/{f}" for f in ("METADATA", "WHEEL", "INSTALLER", "RECORD"))]
    (info / "RECORD").write_text("".join(f"{r},,\n" for r in rows))
    return metadata.PathDistribution(info)


def _project(root: Path, name: str, setup_py: str = "") -> Path:
    (root / name).mkdir(parents=True)
    (root / name / f"{name}.py").write_text("VALUE = 42\n")
    (root / "pyproject.toml").write_text(
        f'[build-system]\nrequires = ["setuptools"]\nbuild-backend = "setuptools.build_meta"\n'
        f'[project]\nname = "{name}"\nversion = "0.3"\n[tool.setuptools]\npackages = ["{name}"]\n')
    if setup_py:
        (root / "setup.py").write_text(setup_py)
    return root


def test_packages_keep_their_origin_and_local_ones_become_wheels(tmp_path):
    site = tmp_path / "site-packages"
    project = _project(tmp_path / "src", "mylocal")
    dists = [
        _dist(site, "pandas", "2.2.2", {"pandas/__init__.py": ""}),
        _dist(site, "numpy", "2.0.1", {"numpy/__init__.py": ""}, installer="conda"),
        _dist(site, "pip", "24.0", {"pip/__init__.py": ""}),
        _dist(site, "mylocal", "0.3", {"__editable__.mylocal.pth": str(project)},
              {"url": project.as_uri(), "dir_info": {"editable": True}}),
        _dist(site, "gone", "1.0", {"gone/__init__.py": "X = 1\n"},
              {"url": "https://github.com/x/gone", "vcs_info": {"vcs": "git", "commit_id": "abc"}}),
    ]
    env = snapshot("a test", cwd=tmp_path / "empty", include=[], environ=[], distributions=dists,
                   prefix=tmp_path)
    assert env.pins() == ["numpy==2.0.1", "pandas==2.2.2"]  # conda's under its index name; pip is the VM's own
    assert {p.name: p.origin for p in env.packages} == {
        "pandas": "index", "numpy": "conda", "mylocal": "editable", "gone": "vcs"}
    assert sorted(env.wheels) == ["gone-1.0-py3-none-any.whl", "mylocal-0.3-py3-none-any.whl"]
    with zipfile.ZipFile(io.BytesIO(env.wheels["mylocal-0.3-py3-none-any.whl"])) as built:
        assert built.read("mylocal/mylocal.py") == b"VALUE = 42\n"  # built from its source directory
    with zipfile.ZipFile(io.BytesIO(env.wheels["gone-1.0-py3-none-any.whl"])) as repacked:
        assert repacked.read("gone/__init__.py") == b"X = 1\n"  # its source is gone: its installed files
        record = repacked.read("gone-1.0.dist-info/RECORD").decode()
        assert "gone/__init__.py,sha256=" in record and "direct_url.json" not in record

    again = snapshot("elsewhere", cwd=tmp_path / "empty", include=[], environ=[], distributions=dists,
                     prefix=tmp_path)
    assert again.hash == env.hash  # where it was taken changes nothing installed
    assert Environment.from_json(json.loads(json.dumps(env.to_json()))).hash == env.hash


def test_a_local_package_whose_wheel_does_not_build_is_refused_with_the_reason(tmp_path):
    project = _project(tmp_path / "src", "broken", setup_py="raise SystemExit('this project cannot be built')\n")
    dist = _dist(tmp_path / "site", "broken", "0.3", {"x.pth": ""}, {"url": project.as_uri(),
                                                                      "dir_info": {"editable": True}})
    with pytest.raises(ClusterSpecError) as info:
        snapshot("a test", cwd=tmp_path, include=[], environ=[], distributions=[dist], prefix=tmp_path)
    assert info.value.field == "package_sync"
    assert "broken 0.3" in info.value.message and "does not build" in info.value.message


def test_conda_packages_without_python_metadata_are_listed(tmp_path):
    meta = tmp_path / "conda-meta"
    meta.mkdir()
    records = {"numpy-2.0.1-py311.json": {"name": "numpy", "version": "2.0.1", "files": [
                   "lib/python3.11/site-packages/numpy-2.0.1.dist-info/METADATA"]},
               "openssl-3.3.1-h0.json": {"name": "openssl", "version": "3.3.1", "files": ["lib/libssl.so.3"]},
               "python-3.11.9-h0.json": {"name": "python", "version": "3.11.9", "files": ["bin/python3.11"]}}
    for name, record in records.items():
        (meta / name).write_text(json.dumps(record))
    env = snapshot("a test", cwd=tmp_path / "empty", include=[], environ=[], distributions=[], prefix=tmp_path)
    assert env.conda_only == ["openssl 3.3.1"]


def test_the_working_directory_ships_code_but_never_secrets(tmp_path):
    (tmp_path / "mymodule.py").write_text("def f():\n    return 1\n")
    (tmp_path / "pkg").mkdir()
    (tmp_path / "pkg" / "__init__.py").write_text("")
    (tmp_path / "pkg" / "data.csv").write_text("a,b\n")
    (tmp_path / "ignored.py").write_text("")
    (tmp_path / ".gitignore").write_text("ignored.py\n")
    for secret in (".env", "credentials.py", "id_rsa.py", "server.pem", ".aws/config.py"):
        (tmp_path / secret).parent.mkdir(exist_ok=True)
        (tmp_path / secret).write_text("SECRET=1\n")
    (tmp_path / ".venv").mkdir()
    (tmp_path / ".venv" / "site.py").write_text("")

    names, data = code_archive(tmp_path, ["*.py", ".env", "*.pem"], [], 10_000)
    assert names == ["mymodule.py", "pkg/__init__.py"]
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        assert sorted(tar.getnames()) == names
    assert code_archive(tmp_path, ["*.py"], [], 10_000)[1] == data  # the same files, the same bytes
    names, _ = code_archive(tmp_path, ["*.py", "*.csv"], ["pkg/"], 10_000)
    assert names == ["mymodule.py"]


def test_code_over_the_cap_is_refused_before_reading_it_all(tmp_path):
    for i in range(3):
        (tmp_path / f"big{i}.bin").write_bytes(b"\0" * 4096)
    with pytest.raises(ClusterSpecError) as info:
        code_archive(tmp_path, ["*.bin"], [], 6000)
    assert info.value.field == "sync.include"
    assert "big0.bin" in info.value.message and "coiled-lab.sync.max-bytes" in info.value.message


def test_allow_listed_variables_only(tmp_path, monkeypatch):
    monkeypatch.setenv("MYAPP_MODE", "fast")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "never")
    env = snapshot("a test", cwd=tmp_path, include=[], environ=["MYAPP_*"], distributions=[], prefix=tmp_path)
    assert env.environ == {"MYAPP_MODE": "fast"}
    assert snapshot("t", cwd=tmp_path, include=[], environ=None, distributions=[], prefix=tmp_path).environ == {}
    with pytest.raises(ClusterSpecError) as info:
        snapshot("a test", cwd=tmp_path, include=[], environ=["MY-VAR"], distributions=[], prefix=tmp_path)
    assert info.value.field == "sync.environ" and "'MY-VAR'" in info.value.message


@pytest.mark.parametrize("change, field", [
    ({"python": "2.7; rm"}, "environment.python"),
    ({"packages": [["x", "1", "somewhere", None]]}, "environment.packages"),
    ({"wheels": {"../../etc/passwd": ""}}, "environment.wheels"),
    ({"files": "not base64!"}, "environment.files"),
    ({"environ": {"A B": "1"}}, "environment.environ"),
    ({"extra": 1}, "environment"),
])
def test_a_sent_environment_is_checked_field_by_field(tmp_path, change, field):
    env = snapshot("a test", cwd=tmp_path, include=[], environ=[], distributions=[], prefix=tmp_path)
    with pytest.raises(ClusterSpecError) as info:
        Environment.from_json({**env.to_json(), **change})
    assert info.value.field == field


def test_the_server_keeps_sent_environments_and_says_when_it_uses_its_own(tmp_path):
    kept = Environments(tmp_path)
    spec = parse_spec({"backend": "aws", "package_sync": True})
    sent = snapshot("the kernel", cwd=tmp_path / "empty", include=[], environ=[],
                    distributions=[_dist(tmp_path / "site", "pandas", "2.2.2", {"p.py": ""})], prefix=tmp_path)
    env = kept.resolve(spec, sent.to_json())
    assert env.where == "the kernel" and (tmp_path / "environments" / f"{env.hash}.json").exists()
    assert Environments(tmp_path).resolve(spec, env.hash).pins() == ["pandas==2.2.2"]  # by hash, after a restart
    with pytest.raises(ClusterSpecError) as info:
        kept.resolve(spec, "0" * 32)
    assert info.value.field == "environment"
    assert kept.resolve(spec, None).where == SERVER
    assert kept.resolve(parse_spec({"backend": "local"}), sent.to_json()) is None
    assert kept.resolve(parse_spec({"backend": "aws", "package_sync": False}), None) is None
    assert sys.version.startswith(kept.resolve(spec, None).python)


class _Offline:
    """A cloud backend that launches nothing: what create does before any launch."""

    name = "aws"
    prices = None

    async def check_access(self, region=None) -> None:
        pass

    def check_spec(self, spec) -> None:
        pass

    async def launch_scheduler(self, cluster):
        raise RuntimeError("offline")

    async def describe(self, cluster):
        return []

    async def ensure_network(self, cluster):
        raise RuntimeError("offline")

    async def cleanup(self, cluster):
        return []


def test_what_the_vms_will_not_have_is_told_once_before_launch(tmp_path):
    import asyncio

    from coiled_lab.control.manager import ClusterManager

    meta = tmp_path / "conda-meta"
    meta.mkdir()
    (meta / "openssl-3.3.1-h0.json").write_text(json.dumps({"name": "openssl", "version": "3.3.1", "files": []}))
    site = tmp_path / "site"
    dists = [_dist(site, "numpy", "2.0.1", {"numpy/__init__.py": ""}, installer="conda")]
    env = snapshot("the kernel", cwd=tmp_path / "empty", include=[], environ=[], distributions=dists, prefix=tmp_path)

    async def create() -> list[dict]:
        async with ClusterManager(tmp_path / "state", backends={"aws": _Offline()}, check_interval=60) as manager:
            record = await manager.create({"backend": "aws", "n_workers": 1, "package_sync": True,
                                           "allow_ingress_from": "198.51.100.0/24"}, env.to_json())
            assert manager.store.get_cluster(record["id"]).state["environment"] == env.hash
            assert record["spec"]["python_version"] == env.python
            return await manager.notifications(record["id"])

    [told] = [n for n in asyncio.run(create()) if n["kind"] == "software"]
    assert told["level"] == "warning"
    assert told["message"] == ("software: synced from the kernel (1 package, 0 local); not installed on the VMs: "
                               "openssl 3.3.1: a conda package with no Python distribution (not on the package index)")
    assert env.pins() == ["numpy==2.0.1"]


def test_package_sync_ignore_and_only_choose_what_is_synced(tmp_path):
    """Coiled's package_sync_ignore / package_sync_only: the environment the VMs get (and
    its hash) leaves packages out; dask and distributed always stay."""
    site = tmp_path / "site"
    dists = [_dist(site, name, version, {f"{name}/__init__.py": ""}) for name, version in
             (("dask", "2026.8.0"), ("distributed", "2026.8.0"), ("pandas", "2.2.2"), ("Polars", "1.9.0"))]
    sent = snapshot("the kernel", cwd=tmp_path / "empty", include=[], environ=[], distributions=dists,
                    prefix=tmp_path).to_json()
    kept = Environments(tmp_path)
    everything = kept.resolve(parse_spec({"backend": "aws"}), sent)
    assert everything.pins() == ["dask==2026.8.0", "distributed==2026.8.0", "pandas==2.2.2", "Polars==1.9.0"]
    ignored = kept.resolve(parse_spec({"backend": "aws", "package_sync_ignore": ["polars"]}), sent)
    assert ignored.pins() == ["dask==2026.8.0", "distributed==2026.8.0", "pandas==2.2.2"]
    assert ignored.hash != everything.hash and kept.get(ignored.hash).pins() == ignored.pins()  # kept by its hash
    only = kept.resolve(parse_spec({"backend": "aws", "package_sync_only": "pandas"}), sent)
    assert only.pins() == ["dask==2026.8.0", "distributed==2026.8.0", "pandas==2.2.2"]
    with pytest.raises(ClusterSpecError) as info:
        parse_spec({"backend": "aws", "package_sync_only": ["pandas"], "package_sync_ignore": ["polars"]})
    assert info.value.field == "package_sync_only" and "not both" in info.value.message
    with pytest.raises(ClusterSpecError) as info:
        parse_spec({"backend": "aws", "package_sync_ignore": ["pandas; rm -rf /"]})
    assert info.value.field == "package_sync_ignore" and "not a package name" in info.value.message


def test_strict_and_fail_on_refuse_before_launch_what_would_not_sync(tmp_path):
    """package_sync_fail_on='warning-or-higher' and package_sync_strict refuse a create
    whose environment would not all reach the VMs, before anything is recorded."""
    import asyncio

    from coiled_lab.control.manager import ClusterManager

    meta = tmp_path / "conda-meta"
    meta.mkdir()
    (meta / "openssl-3.3.1-h0.json").write_text(json.dumps({"name": "openssl", "version": "3.3.1", "files": []}))
    dists = [_dist(tmp_path / "site", "numpy", "2.0.1", {"numpy/__init__.py": ""})]
    env = snapshot("the kernel", cwd=tmp_path / "empty", include=[], environ=[], distributions=dists, prefix=tmp_path)
    base = {"backend": "aws", "n_workers": 1, "allow_ingress_from": "198.51.100.0/24"}

    async def create(**fields) -> Exception:
        async with ClusterManager(tmp_path / "state", backends={"aws": _Offline()}, check_interval=60) as manager:
            with pytest.raises(ClusterSpecError) as info:
                await manager.create({**base, **fields}, env.to_json())
            assert manager.store.list_clusters() == []
            return info.value

    refused = asyncio.run(create(package_sync_fail_on="warning-or-higher"))
    assert refused.field == "package_sync_fail_on" and "openssl 3.3.1: a conda package" in refused.message
    assert "\n" not in refused.message
    assert asyncio.run(create(package_sync_strict=True)).field == "package_sync_strict"
    elsewhere = snapshot("a Mac", cwd=tmp_path / "empty", include=[], environ=[], distributions=dists,
                         prefix=tmp_path / "no-conda").to_json()
    elsewhere["platform"] = "darwin-arm64"
    kept = Environments(tmp_path)
    with pytest.raises(ClusterSpecError) as info:
        kept.resolve(parse_spec({**base, "package_sync_strict": True}), elsewhere)
    assert "runs on darwin-arm64 and the VMs on linux-x86_64" in info.value.message
    assert kept.resolve(parse_spec(base), elsewhere).platform == "darwin-arm64"  # not strict: the VMs' own builds


def test_environments_no_live_cluster_uses_are_removed_after_a_while(tmp_path):
    import os
    import time

    kept = Environments(tmp_path)
    old, used, fresh = (snapshot(f"k{i}", cwd=tmp_path / "empty", include=[], environ=[], prefix=tmp_path,
                                 distributions=[_dist(tmp_path / f"s{i}", "pandas", f"2.{i}", {"p.py": ""})])
                        for i in range(3))
    for env in (old, used, fresh):
        kept.stage(env.to_json())
    month_ago = time.time() - 31 * 86400
    for env in (old, used):
        os.utime(tmp_path / "environments" / f"{env.hash}.json", (month_ago, month_ago))
    assert kept.prune(keep={used.hash}) == [old.hash]
    assert kept.get(old.hash) is None and kept.get(used.hash) and kept.get(fresh.hash)
