"""The VM fetches uv with urllib from a package index's JSON simple API (PEP 691): the
wheel for its architecture, checked against the sha256 the index gives, only the binary
taken out. Against a local index, directly and through an HTTP proxy."""

from __future__ import annotations

import hashlib
import subprocess

import pytest

from coiled_lab.bootstrap import packages

from .index import ForwardProxy, Index, wheel

VERSION = "0.0.7"
FAKE_UV = b"#!/bin/sh\necho 'uv 0.0.7 (fake)'\n"


@pytest.fixture
def index(tmp_path):
    root = tmp_path / "index"
    root.mkdir()
    for tag, arch in (("manylinux_2_17_x86_64.manylinux2014_x86_64", "x86_64"),
                      ("manylinux_2_17_aarch64.manylinux2014_aarch64.musllinux_1_1_aarch64", "aarch64"),
                      ("musllinux_1_1_x86_64", "musl")):
        wheel(root, "uv", VERSION, tag=f"py3-none-{tag}",
              extra={f"uv-{VERSION}.data/scripts/uv": FAKE_UV.replace(b"(fake)", arch.encode()),
                     f"uv-{VERSION}.data/scripts/uvx": b"#!/bin/sh\n"})
    wheel(root, "uv", "0.0.6", tag="py3-none-manylinux_2_17_x86_64.manylinux2014_x86_64")
    server = Index(root)
    yield server
    server.close()


def test_the_wheel_for_this_architecture_is_fetched_and_only_uv_taken_out(index, tmp_path):
    binary = packages.fetch_uv(tmp_path / "bin", index.simple, VERSION, machine="x86_64")
    assert binary == tmp_path / "bin" / "uv" and sorted(p.name for p in binary.parent.iterdir()) == ["uv"]
    assert subprocess.run([str(binary)], capture_output=True, text=True).stdout == "uv 0.0.7 x86_64\n"
    page = [r for r in index.requests if r["path"] == "/simple/uv/"]
    assert page and page[0]["accept"] == "application/vnd.pypi.simple.v1+json"
    assert index.paths("/files/") == [f"/files/uv-{VERSION}-py3-none-manylinux_2_17_x86_64.manylinux2014_x86_64.whl"]

    arm = packages.fetch_uv(tmp_path / "arm", index.simple, VERSION, machine="arm64")
    assert subprocess.run([str(arm)], capture_output=True, text=True).stdout == "uv 0.0.7 aarch64\n"


def test_a_sha256_mismatch_is_refused(index, tmp_path):
    name = f"uv-{VERSION}-py3-none-manylinux_2_17_x86_64.manylinux2014_x86_64.whl"
    index.lie[name] = hashlib.sha256(b"another file").hexdigest()
    with pytest.raises(packages.BootError, match=f"{name} has sha256 [0-9a-f]{{64}}; the index says "
                                                 f"{index.lie[name]}: refusing it"):
        packages.fetch_uv(tmp_path / "bin", index.simple, VERSION, machine="x86_64")
    assert not (tmp_path / "bin" / "uv").exists()


def test_no_wheel_for_the_architecture_or_no_index_say_so(index, tmp_path):
    with pytest.raises(packages.BootError, match="has no uv 0.0.7 wheel for s390x Linux"):
        packages.fetch_uv(tmp_path / "bin", index.simple, VERSION, machine="s390x")
    with pytest.raises(packages.BootError, match=r"uv 0.0.7 could not be fetched from http://127.0.0.1:\d+/nothing/uv/: "
                                                 r"HTTPError: HTTP Error 404"):
        packages.fetch_uv(tmp_path / "bin", f"{index.url}/nothing", VERSION, machine="x86_64")


def test_through_an_http_proxy(index, tmp_path, monkeypatch):
    proxy = ForwardProxy()
    try:
        monkeypatch.setenv("http_proxy", proxy.url)
        monkeypatch.delenv("no_proxy", raising=False)
        monkeypatch.delenv("NO_PROXY", raising=False)
        binary = packages.fetch_uv(tmp_path / "bin", index.simple, VERSION, machine="x86_64")
        assert binary.is_file()
        assert [r["url"] for r in proxy.requests] == [
            f"{index.simple}/uv/", f"{index.url}/files/uv-{VERSION}-py3-none-manylinux_2_17_x86_64.manylinux2014_x86_64.whl"]
    finally:
        proxy.close()


def test_the_index_comes_from_config_then_environment_then_pypi(monkeypatch):
    monkeypatch.delenv("UV_INDEX_URL", raising=False)
    monkeypatch.delenv("PIP_INDEX_URL", raising=False)
    assert packages.index_url() == "https://pypi.org/simple"
    monkeypatch.setenv("PIP_INDEX_URL", "https://pip.example/simple/")
    assert packages.index_url() == "https://pip.example/simple"
    monkeypatch.setenv("UV_INDEX_URL", "https://uv.example/simple")
    assert packages.index_url() == "https://uv.example/simple"
    assert packages.index_url("https://mirror.example/simple/") == "https://mirror.example/simple"
