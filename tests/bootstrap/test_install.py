"""The VM's install phase with the real uv (the version the bootstrap pins, from the test
extra) against a local package index of tiny wheels: a complete set of pins installs in
one run; pins that cannot be installed (not on the index, a source distribution whose
build fails for want of a compiler) are found by bisection and skipped with the installer's
reasons while the rest install; a required package that cannot be installed is fatal, with
the line that says why; without pins, dask and a requirements file install with dask's
version as a constraint; GPU machines get dask-cuda without their dask being replaced."""

from __future__ import annotations

import math
import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

from coiled_lab.bootstrap import packages

from .index import ForwardProxy, Index, failing_sdist, wheel

GOOD = [f"pkg-{i:02d}==1.{i}" for i in range(30)]


def uv_binary() -> str:
    found = Path(sysconfig.get_path("scripts")) / "uv"
    path = str(found) if found.is_file() else shutil.which("uv")
    assert path, "uv is not installed: it is part of the test extra (pip install -e '.[test]')"
    version = subprocess.run([path, "--version"], capture_output=True, text=True).stdout.split()[1]
    assert version == packages.UV_VERSION, f"the test extra pins uv {packages.UV_VERSION}; this is {version}"
    return path


@pytest.fixture(scope="module")
def index(tmp_path_factory):
    root = tmp_path_factory.mktemp("index")
    for pin in GOOD:
        name, version = pin.split("==")
        wheel(root, name, version)
    failing_sdist(root, "needsgcc", "2.0")
    for version in ("2025.1.0", "2026.8.0", "2099.0.0"):
        wheel(root, "dask", version)
    wheel(root, "distributed", "2026.8.0", requires=["dask>=2025.1.0", "toolz>=0.10"])
    wheel(root, "toolz", "1.0.0")
    for version in ("1.26.0", "2.0.0"):
        wheel(root, "numpy", version)
    wheel(root, "numba", "0.60.0", requires=["numpy>=1.22"])
    wheel(root, "pynvml", "12.0.0")
    wheel(root, "zict", "3.0.0")
    server = Index(root)
    yield server
    server.close()


@pytest.fixture
def venv(tmp_path, index, monkeypatch):
    """A fresh environment with this interpreter's Python, and its installer."""
    monkeypatch.setenv("UV_PYTHON_DOWNLOADS", "never")
    env = packages.uv_environment(tmp_path, index.simple)
    lines: list[str] = []
    python, _, _ = packages.make_venv(Path(uv_binary()), "%d.%d" % sys.version_info[:2], tmp_path / "venv", env,
                                      lines.append)
    installer = packages.Installer(Path(uv_binary()), python, env, lines.append, tmp_path)
    installer.lines = lines  # type: ignore[attr-defined]
    return installer


def said(messages: list) -> callable:
    return lambda message, level="INFO": messages.append((level, message))


def version_of(installer: packages.Installer, name: str) -> str:
    return subprocess.run([installer.python, "-c", f"import importlib.metadata as m; print(m.version({name!r}))"],
                          capture_output=True, text=True).stdout.strip()


def test_a_complete_set_of_pins_installs_in_one_run(venv):
    pins = GOOD[:12] + ["dask==2026.8.0", "distributed==2026.8.0"]
    messages: list = []
    outcome = packages.install(venv, pins, said(messages))
    assert venv.calls == 1 and outcome.skipped == [] and outcome.fatal == []
    assert outcome.installed == {p.split("==")[0] for p in pins}
    assert version_of(venv, "pkg-11") == "1.11" and version_of(venv, "dask") == "2026.8.0"
    assert "toolz" not in outcome.installed  # pins are a complete set: no dependency resolution
    assert messages == [("INFO", "package_sync: installing 14 pinned packages")]


def test_pins_that_cannot_be_installed_are_found_by_bisection_and_skipped_with_reasons(venv):
    pins = GOOD[:15] + ["nothere==1.0"] + GOOD[15:] + ["needsgcc==2.0"]
    messages: list = []
    outcome = packages.install(venv, pins + ["dask==2026.8.0", "distributed==2026.8.0"], said(messages))
    n = len(pins) + 2
    assert outcome.installed == {p.split("==")[0] for p in GOOD} | {"dask", "distributed"}
    skipped = {s.requirement: s.reason for s in outcome.skipped}
    assert set(skipped) == {"nothere==1.0", "needsgcc==2.0"} and outcome.fatal == []
    assert "nothere was not found in the package registry" in skipped["nothere==1.0"]
    assert skipped["needsgcc==2.0"].startswith("Failed to build `needsgcc==2.0`")
    assert skipped["needsgcc==2.0"].endswith("command 'gcc' failed: No such file or directory")
    assert ("WARNING", f"skipped needsgcc==2.0: {skipped['needsgcc==2.0']}") in messages
    # Two bad pins among 34: each costs about log2(34) runs, far fewer than one run per pin.
    print(f"{n} pins, 2 bad: {venv.calls} uv runs")
    assert venv.calls <= 1 + 2 * 2 * math.ceil(math.log2(n)) and venv.calls < n / 2


def test_a_required_package_that_cannot_be_installed_is_fatal_with_the_reason(venv):
    pins = GOOD[:4] + ["dask==2026.8.0", "distributed==2099.1.0", "pkg-05==9.9"]
    outcome = packages.install(venv, pins, said([]), required=["pkg-05"])
    assert outcome.installed == {"pkg-00", "pkg-01", "pkg-02", "pkg-03", "dask"}
    assert outcome.fatal == [
        "required package distributed==2099.1.0 could not be installed: Because there is no version of "
        "distributed==2099.1.0 and you require distributed==2099.1.0, we can conclude that your requirements "
        "are unsatisfiable.",
        "required package pkg-05==9.9 could not be installed: Because there is no version of pkg-05==9.9 and you "
        "require pkg-05==9.9, we can conclude that your requirements are unsatisfiable.",
    ]


def test_without_pins_dask_and_the_requirements_install_with_dasks_version_as_constraint(venv, index):
    requirements = (f"# the user's requirements file\n--index-url {index.simple}\n"
                    "pkg-01>=1.0  # a comment\n"
                    "dask<2026\n"
                    "nothere\n"
                    "numba \\\n   >=0.59\n")
    outcome = packages.install(venv, [], said([]), requirements, {"dask": "2026.8.0", "distributed": "2026.8.0"})
    assert {"dask", "distributed", "toolz", "pkg-01", "numba", "numpy"} <= outcome.installed
    assert version_of(venv, "dask") == "2026.8.0"  # neither the newest nor the requirement's
    assert {s.requirement for s in outcome.skipped} == {"dask<2026", "nothere"}
    assert outcome.fatal == []  # a line about dask failed, but dask is there


def test_gpu_machines_get_dask_cuda_and_its_dependencies_without_replacing_dask(venv, index, tmp_path):
    """dask-cuda pins dask and distributed through rapids-dask-dependency: that one is left
    out, the rest resolved against the pins, so a release whose dependencies fit them is
    chosen (26.10 wants numpy 2; the pins say 1.26: 25.10)."""
    extra = tmp_path / "extra"
    extra.mkdir()
    added = [index.add(wheel(extra, "dask-cuda", "25.10.0", requires=[
                 "rapids-dask-dependency==25.10.*", "numba>=0.59.1", "numpy>=1.23", "pynvml>=12.0.0", "zict>=2.0.0",
                 'pytest; extra == "test"'])),
             index.add(wheel(extra, "dask-cuda", "26.10.0", requires=[
                 "rapids-dask-dependency==26.10.*", "numpy<3.0,>=2.0", "nvidia-ml-py>=12", "zict>=2.0.0"]))]
    try:
        pins = ["dask==2026.8.0", "distributed==2026.8.0", "toolz==1.0.0", "numpy==1.26.0"]
        messages: list = []
        outcome = packages.install(venv, pins, said(messages), gpu=True)
        assert outcome.fatal == [] and outcome.skipped == []
        assert {"dask-cuda", "numba", "pynvml", "zict"} <= outcome.installed
        assert "rapids-dask-dependency" not in outcome.installed and "pytest" not in outcome.installed
        assert [version_of(venv, n) for n in ("dask-cuda", "dask", "distributed", "numpy")] == \
            ["25.10.0", "2026.8.0", "2026.8.0", "1.26.0"]
        assert ("INFO", "GPU machine: installing dask-cuda and its dependencies") in messages
    finally:
        for path in added:
            path.unlink()


def test_a_gpu_machine_without_dask_cuda_is_fatal(venv):
    outcome = packages.install(venv, ["dask==2026.8.0", "distributed==2026.8.0"], said([]), gpu=True)
    assert outcome.fatal == ["required package dask-cuda could not be installed: Because dask-cuda was not found in "
                             "the package registry and you require dask-cuda, we can conclude that your requirements "
                             "are unsatisfiable."]


class Counting(packages.Installer):
    """An installer that fails any run holding a bad item, without uv."""

    def __init__(self, bad: set):
        self.bad, self.calls, self.installed = bad, 0, set()

    def run(self, lines, args=()):
        self.calls += 1
        failed = [x for x in lines if x in self.bad]
        return not failed, [f"error: {x} is bad" for x in failed]


@pytest.mark.parametrize("n,bad", [(1024, 1), (1024, 3), (100, 1), (7, 7)])
def test_bisection_costs_a_logarithmic_number_of_runs(n, bad):
    items = [f"p{i}" for i in range(n)]
    installer = Counting(set(items[i * n // bad + n // (2 * bad)] for i in range(bad)))
    done, skipped = installer.each(items)
    assert len(done) == n - bad and {s.requirement for s in skipped} == installer.bad
    assert all(s.reason == f"{s.requirement} is bad" for s in skipped)
    # Each bad item costs at most two runs per halving: O(bad · log n), not n.
    assert installer.calls <= 1 + 2 * bad * math.ceil(math.log2(n)), installer.calls


def test_another_python_of_the_machine_or_a_clear_error(tmp_path, index, monkeypatch):
    """A version other than the running interpreter's: uv finds one on the machine (here a
    pyenv build, on PATH), else (downloads being off here) says there is none."""
    pyenv = Path.home() / ".pyenv/versions/3.10.13/bin"
    if not (pyenv / "python3.10").is_file():
        pytest.skip("no Python 3.10 build on this machine")
    monkeypatch.setenv("UV_PYTHON_DOWNLOADS", "never")
    monkeypatch.setenv("PATH", f"{pyenv}:/usr/bin:/bin")
    env = packages.uv_environment(tmp_path, index.simple)
    python, version, source = packages.make_venv(Path(uv_binary()), "3.10", tmp_path / "v310", env, lambda line: None)
    assert (python, version) == (f"{tmp_path}/v310/bin/python", "3.10.13")
    assert source == f"{os.path.realpath(pyenv / 'python3.10')}, found on this machine"
    with pytest.raises(packages.BootError, match=r"no virtual environment with Python 3\.7: No interpreter found "
                                                 r"for Python 3\.7"):
        packages.make_venv(Path(uv_binary()), "3.7", tmp_path / "v37", env, lambda line: None)


def test_uv_goes_through_the_http_proxy_the_environment_names(tmp_path, index, monkeypatch):
    """A VM may reach the index only through ``http_proxy``/``https_proxy``: uv is given the
    environment as it is, and uses the proxy like urllib does."""
    proxy = ForwardProxy()
    try:
        for name in ("http_proxy", "HTTP_PROXY"):
            monkeypatch.setenv(name, proxy.url)
        for name in ("no_proxy", "NO_PROXY"):
            monkeypatch.setenv(name, "169.254.169.254,metadata.google.internal")
        monkeypatch.setenv("UV_PYTHON_DOWNLOADS", "never")
        env = packages.uv_environment(tmp_path, index.simple)
        python, _, _ = packages.make_venv(Path(uv_binary()), "%d.%d" % sys.version_info[:2], tmp_path / "venv", env,
                                          lambda line: None)
        installer = packages.Installer(Path(uv_binary()), python, env, lambda line: None, tmp_path)
        outcome = packages.install(installer, ["pkg-00==1.0", "pkg-01==1.1", "dask==2026.8.0", "distributed==2026.8.0"],
                                   said([]))
        assert outcome.installed == {"pkg-00", "pkg-01", "dask", "distributed"} and not outcome.fatal
        fetched = {r["url"] for r in proxy.requests}
        assert f"{index.simple}/pkg-00/" in fetched and f"{index.url}/files/pkg_00-1.0-py3-none-any.whl" in fetched
    finally:
        proxy.close()
