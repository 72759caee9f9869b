"""The bootstrap as a VM runs it, on this machine: EC2 user-data executed by ``/bin/sh``
with this machine's ``/usr/bin/python3`` (Debian 12's 3.11, as on the product's default
image) and nothing else of ours: it unpacks itself, signs its log lines with the instance
role's credentials from an IMDSv2 stand-in and ships them to CloudWatch (moto) from the
first phase on, fetches the real uv from a local package index, makes a virtual
environment with the distribution's Python, installs tiny packages (skipping the ones that
cannot be), starts "dask" (a stand-in ``distributed`` that prints what the scheduler
prints), times each phase and writes the boot report. Also: the shipped modules import
with the image's Python (3.9 too) without any third-party package, name nothing they do
not define, and the scheduler's preload answers the boot report."""

from __future__ import annotations

import gzip
import json
import os
import platform
import re
import socket
import subprocess
import symtable
import tarfile
import io
import time
import builtins
from pathlib import Path
from types import SimpleNamespace

import boto3
import pytest

from coiled_lab.backends import bootconfig
from coiled_lab.backends.aws import userdata
from coiled_lab.bootstrap import lifetime, packages
from coiled_lab.spec import parse_spec
from coiled_lab.tls import TLSMaterial

from ..aws.emulator import Identity, MetadataServer
from .index import Index, failing_sdist, wheel
from .test_install import uv_binary

IMAGE_PYTHON = "/usr/bin/python3"
PHASE = re.compile(r"boot: (?P<phase>[a-z]+)\b(?P<details>.*) in (?P<seconds>[0-9]+\.[0-9]) s$")
FAKE_SCHEDULER = b'''import json, os, sys
report = json.load(open(os.environ["COILED_LAB_BOOT_REPORT"]))
host = sys.argv[sys.argv.index("--host") + 1]
print("distributed.scheduler - INFO -   Scheduler at: tls://%s:8786" % host, flush=True)
print("stand-in scheduler: phases %s, python %s" % ([p["name"] for p in report["phases"]], sys.executable))
'''
FAKE_WORKER = b'''import os, sys, time
print("distributed.worker - INFO -         Registered to: %s" % sys.argv[1], flush=True)
while not os.path.exists("retired"):  # the stand-in scheduler closes it (see FAKE_CORE)
    time.sleep(0.05)
print("stand-in worker: closed by the scheduler", flush=True)
'''
FAKE_CORE = b'''class rpc:
    def __init__(self, address, connection_args=None):
        self.address = address
    async def __aenter__(self):
        return self
    async def __aexit__(self, *exc):
        pass
    async def retire_workers(self, names, close_workers, remove):
        print("stand-in scheduler: retire_workers(%s) at %s" % (names, self.address), flush=True)
        open("retired", "w").close()
'''
FAKE_SECURITY = b'''class Security:
    def __init__(self, **options):
        assert options["require_encryption"]
    def get_connection_args(self, role):
        return {}
'''


def pythons() -> list[str]:
    """The image's Python of the default image (Debian 12's), and the oldest one the
    bootstrap must run under (Amazon Linux 2023's 3.9), where this machine has them."""
    found = [IMAGE_PYTHON] if os.access(IMAGE_PYTHON, os.X_OK) else []
    found += [p for p in (os.path.expanduser("~/.pyenv/versions/3.9.18/bin/python3"),) if os.access(p, os.X_OK)]
    return found


def unpack(tmp_path: Path, cloud: str, role: str) -> Path:
    target = tmp_path / f"{cloud}-{role}"
    with tarfile.open(fileobj=io.BytesIO(bootconfig.archive({"cloud": cloud, "role": role}))) as tar:
        tar.extractall(target)
    return target


@pytest.mark.parametrize("cloud,role", [("aws", "scheduler"), ("aws", "worker"), ("gcp", "scheduler"), ("gcp", "worker")])
def test_the_shipped_bootstrap_imports_with_the_images_python_and_the_standard_library_only(tmp_path, cloud, role):
    if not pythons():
        pytest.skip(f"neither {IMAGE_PYTHON} nor a Python 3.9 on this machine")
    here = unpack(tmp_path, cloud, role)
    modules = {p.stem for p in (here / "coiled_lab" / "bootstrap").glob("*.py")} - {"__init__", "lifetime", "watchdog"}
    assert modules == {"vm", "packages", "logship", "envcache", "utclog"} | ({"worker"} if role == "worker" else set()) | \
        ({"gce", "cloudlogging"} if cloud == "gcp" else set())
    check = (f"import sys; sys.path.insert(0, {str(here)!r}); "
             + "; ".join(f"import coiled_lab.bootstrap.{m}" for m in sorted(modules))
             + "; third = {m.split('.')[0] for m in sys.modules} & {'dask', 'distributed', 'boto3', 'botocore', 'yaml'}"
             + "; assert not third, third")
    for python in pythons():
        done = subprocess.run([python, "-s", "-c", check], capture_output=True, text=True, cwd=tmp_path)
        assert done.returncode == 0, f"{python}: {done.stderr}"


@pytest.mark.parametrize("module", sorted({*bootconfig.BOOTSTRAP_MODULES, "lifetime.py", "watchdog.py", "worker.py",
                                           "gce.py", "cloudlogging.py"} - {"__init__.py"}))
def test_shipped_modules_name_nothing_they_do_not_define(module):
    """What is stripped for the VMs (docstrings, annotations, server-only functions) leaves
    no name behind that a VM would look up and not find."""
    source = bootconfig._shipped(module).decode()
    table = symtable.symtable(source, module, "exec")
    defined = set(table.get_identifiers()) | set(dir(builtins))
    missing = set()

    def walk(scope: symtable.SymbolTable) -> None:
        for symbol in scope.get_symbols():
            if (symbol.is_global() or (scope is table and symbol.is_referenced())) and symbol.get_name() not in defined:
                missing.add(symbol.get_name())
            if scope is table and symbol.is_referenced() and not (symbol.is_assigned() or symbol.is_imported()) \
                    and symbol.get_name() not in dir(builtins):
                missing.add(symbol.get_name())
        for child in scope.get_children():
            walk(child)

    walk(table)
    assert not missing, f"{module} as shipped uses {sorted(missing)} without defining them"


def test_the_lifetime_handler_answers_the_boot_report(tmp_path, monkeypatch):
    scheduler = SimpleNamespace(idle_since=None, clients={}, handlers={})
    plugin = lifetime.Lifetime()
    plugin.scheduler = scheduler
    assert plugin.status()["boot"] is None  # a local cluster: no report
    report = tmp_path / "boot-report.json"
    monkeypatch.setenv("COILED_LAB_BOOT_REPORT", str(report))
    assert plugin.status()["boot"] is None  # not written yet
    first = {"python": "3.11.2", "python_source": "/usr/bin/python3.11, the distribution's",
             "phases": [{"name": "uv", "seconds": 0.4}], "installed": 0, "skipped": []}
    report.write_text(json.dumps(first))
    assert plugin.status()["boot"] == first
    second = {**first, "phases": first["phases"] + [{"name": "dask", "seconds": 1.3}],
              "skipped": [{"requirement": "foo==1.0", "reason": "Because foo was not found"}]}
    report.write_text(json.dumps(second))
    os.utime(report, ns=(time.time_ns() + 10**9, time.time_ns() + 10**9))
    assert plugin.status()["boot"] == second


# -- the whole boot, for real ---------------------------------------------------------------

@pytest.fixture(scope="module")
def cloudwatch():
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()


@pytest.fixture(scope="module")
def index(tmp_path_factory):
    """uv (the real binary, in a wheel of the pinned version for this machine's
    architecture) and tiny packages, among them stand-ins for dask and distributed."""
    root = tmp_path_factory.mktemp("index")
    arch = {"amd64": "x86_64", "arm64": "aarch64"}.get(platform.machine().lower(), platform.machine().lower())
    wheel(root, "uv", packages.UV_VERSION, tag=f"py3-none-manylinux_2_17_{arch}.manylinux2014_{arch}",
          extra={f"uv-{packages.UV_VERSION}.data/scripts/uv": Path(uv_binary()).read_bytes()})
    for i in range(8):
        wheel(root, f"pkg-{i}", "1.0")
    failing_sdist(root, "needsgcc", "2.0")
    wheel(root, "dask", "2026.8.0")
    wheel(root, "distributed", "2026.8.0", extra={
        "distributed/cli/__init__.py": b"", "distributed/cli/dask_scheduler.py": FAKE_SCHEDULER,
        "distributed/cli/dask_worker.py": FAKE_WORKER, "distributed/core.py": FAKE_CORE,
        "distributed/security.py": FAKE_SECURITY})
    server = Index(root)
    yield server
    server.close()


def boot(tmp_path: Path, index: Index, cloudwatch: str, pins: list[str], role: str = "scheduler",
         scheduler: str = "", spot: bool = False, python3: str = IMAGE_PYTHON) -> tuple[int, list[str], Path, str]:
    """Run a VM's user-data as cloud-init would, on this machine, with ``python3`` as the
    image's; returns the exit status, the console lines, the bootstrap's directory and the
    log group's name."""
    tls = TLSMaterial.generate("c1")
    config = userdata.bootstrap_config("c1boot", parse_spec({"backend": "aws"}), tls, role, scheduler or None,
                                       software={"packages": pins, "packages_skipped": [
                                           "mylib 0.1: editable install from file:///home/me/mylib"]})
    group = f"boot-{time.monotonic_ns()}"
    config.update(log_group=group, index_url=index.simple, python_version="3.11", spot_poll_interval=0.1,
                  dask_version="2026.8.0", distributed_version="2026.8.0")
    script = tmp_path / "user-data"
    script.write_bytes(gzip.decompress(userdata.build(config)))
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "shutdown").write_text("#!/bin/sh\necho shutdown \"$@\"\n")
    (bin_dir / "shutdown").chmod(0o755)
    (bin_dir / "python3").symlink_to(python3)
    (tmp_path / "tmp").mkdir()
    boto3.client("logs", region_name="us-east-1", endpoint_url=cloudwatch, aws_access_key_id="test",
                 aws_secret_access_key="test").create_log_group(logGroupName=group)
    metadata = MetadataServer(Identity("i-0boot", "127.0.0.1", "us-east-1a", "m6i.large", "spot" if spot else "on-demand",
                                       "coiled-lab-instance"))
    if spot:  # EC2 has already announced that it takes the machine back
        metadata.identity.spot_action = json.dumps({"action": "terminate", "time": "2026-01-01T00:02:00Z"})
    try:
        env = {"PATH": f"{bin_dir}:/usr/bin:/bin", "HOME": str(tmp_path), "TMPDIR": str(tmp_path / "tmp"),
               "LANG": "C.UTF-8", "AWS_EC2_METADATA_SERVICE_ENDPOINT": metadata.url, "AWS_ENDPOINT_URL": cloudwatch,
               "UV_PYTHON_DOWNLOADS": "never"}  # no keys: the instance role's credentials sign
        done = subprocess.run(["/bin/sh", str(script)], env=env, cwd=tmp_path, capture_output=True, text=True,
                              timeout=300)
    finally:
        metadata.close()
    (workdir,) = (tmp_path / "tmp").glob("coiled-lab.*")
    return done.returncode, done.stdout.splitlines(), workdir, group


def shipped(cloudwatch: str, group: str, role: str = "scheduler") -> list[str]:
    logs = boto3.client("logs", region_name="us-east-1", endpoint_url=cloudwatch, aws_access_key_id="test",
                        aws_secret_access_key="test")
    return [e["message"] for e in logs.get_log_events(logGroupName=group, logStreamName=f"c1boot/{role}-i-0boot",
                                                      startFromHead=True)["events"]]


def phases(lines: list[str]) -> list[tuple[str, str]]:
    return [(m["phase"], m["details"]) for m in map(PHASE.search, lines) if m]


@pytest.mark.skipif(not os.access(IMAGE_PYTHON, os.X_OK), reason=f"no {IMAGE_PYTHON} (Debian's) on this machine")
@pytest.mark.parametrize("python3", ["debian", "3.9"])
def test_a_scheduler_boots_with_the_images_python_and_reports_each_phase(tmp_path, index, cloudwatch, python3):
    """Debian 12's python3 is 3.11, the version asked for: the environment is made from it.
    Amazon Linux 2023's is 3.9 (here pyenv's): the bootstrap runs under it, and uv finds the
    machine's 3.11 for the environment (Debian's, here; on a bare AL2023 it downloads one)."""
    runs = IMAGE_PYTHON if python3 == "debian" else os.path.expanduser("~/.pyenv/versions/3.9.18/bin/python3")
    if not os.access(runs, os.X_OK):
        pytest.skip(f"no {runs} on this machine")
    image = subprocess.run([IMAGE_PYTHON, "-c", "import sys; print('%d.%d.%d' % sys.version_info[:3])"],
                           capture_output=True, text=True).stdout.split()
    if not image[0].startswith("3.11."):
        pytest.skip(f"{IMAGE_PYTHON} is {image[0]}, not Debian 12's 3.11")
    pins = ["dask==2026.8.0", "distributed==2026.8.0", "pkg-0==1.0", "pkg-1==1.0", "nothere==1.0", "pkg-2==1.0",
            "needsgcc==2.0", "pkg-3==1.0"]
    status, console, workdir, group = boot(tmp_path, index, cloudwatch, pins, python3=runs)
    assert status == 0, "\n".join(console[-30:])
    found = phases(console)
    assert [p for p, _ in found] == ["uv", "python", "packages", "dask", "total"], found
    assert found[0][1] == f" {packages.UV_VERSION} ready"
    base = os.path.realpath(IMAGE_PYTHON)
    assert found[1][1] == f" {image[0]} ({base}, the distribution's) ready"
    assert found[2][1] == ": 6 installed, 2 skipped" and found[3][1] == " scheduler started"
    assert any("package_sync cannot install mylib 0.1: editable install" in line for line in console)
    assert any(re.search(r"WARNING - skipped nothere==1.0: Because nothere was not found in the package registry", line)
               for line in console)
    assert console[-2].endswith("dask scheduler exited with status 0; this machine shuts down")
    assert console[-1] == "shutdown -h now"
    stand_in = next(line for line in console if line.startswith("stand-in scheduler:"))
    assert stand_in == f"stand-in scheduler: phases ['uv', 'python', 'packages'], python {workdir}/venv/bin/python"

    report = json.loads((workdir / "boot-report.json").read_text())
    assert (report["python"], report["python_source"]) == (image[0], f"{base}, the distribution's")
    assert [p["name"] for p in report["phases"]] == ["uv", "python", "packages", "dask"]
    assert all(isinstance(p["seconds"], float) for p in report["phases"]) and report["installed"] == 6
    skipped = {s["requirement"]: s["reason"] for s in report["skipped"]}
    assert set(skipped) == {"nothere==1.0", "needsgcc==2.0"}
    assert "command 'gcc' failed" in skipped["needsgcc==2.0"]

    logged = shipped(cloudwatch, group)
    assert "scheduler i-0boot (m6i.large, us-east-1a, on-demand) of cluster c1boot at 127.0.0.1" in logged[0]
    assert f"this bootstrap runs under {tmp_path}/bin/python3 (Python {'3.11' if python3 == 'debian' else '3.9'}." \
        in logged[0]
    assert [p for p, _ in phases(logged)] == ["uv", "python", "packages", "dask", "total"]
    assert logged[-1].endswith("dask scheduler exited with status 0; this machine shuts down")


@pytest.mark.skipif(not os.access(IMAGE_PYTHON, os.X_OK), reason=f"no {IMAGE_PYTHON} (Debian's) on this machine")
def test_a_required_package_that_cannot_be_installed_ends_the_boot_with_why(tmp_path, index, cloudwatch):
    pins = ["dask==2026.8.0", "distributed==2099.1.0", "pkg-0==1.0"]
    status, console, workdir, group = boot(tmp_path, index, cloudwatch, pins)
    assert status == 1
    why = ("cannot start dask: required package distributed==2099.1.0 could not be installed: Because there is no "
           "version of distributed==2099.1.0 and you require distributed==2099.1.0, we can conclude that your "
           "requirements are unsatisfiable.")
    assert console[-2].endswith(f"ERROR - {why}") and console[-1] == "shutdown -h now"
    assert not any("starting dask" in line for line in console)
    logged = shipped(cloudwatch, group)
    assert logged[-1].endswith(f"ERROR - {why}")  # the last line the manager shows
    assert json.loads((workdir / "boot-report.json").read_text())["skipped"] == [
        {"requirement": "distributed==2099.1.0", "reason": why.split("installed: ", 1)[1]}]


@pytest.mark.skipif(not os.access(IMAGE_PYTHON, os.X_OK), reason=f"no {IMAGE_PYTHON} (Debian's) on this machine")
def test_a_spot_worker_waits_for_its_scheduler_and_retires_through_the_environments_python(tmp_path, index, cloudwatch):
    """Retiring needs distributed: the image's python3 has none, the environment's does."""
    with socket.create_server(("127.0.0.1", 0)) as listening:
        address = f"tls://127.0.0.1:{listening.getsockname()[1]}"
        status, console, workdir, group = boot(tmp_path, index, cloudwatch, ["dask==2026.8.0", "distributed==2026.8.0"],
                                               role="worker", scheduler=address, spot=True)
    assert status == 0, "\n".join(console[-30:])
    assert [p for p, _ in phases(console)] == ["uv", "python", "packages", "scheduler", "dask", "total"]
    assert phases(console)[3][1] == f" {address} reachable" and phases(console)[4][1] == " worker started"
    assert any("spot interruption notice" in line for line in console)
    assert "stand-in scheduler: retire_workers(['i-0boot']) at " + address in console
    assert "stand-in worker: closed by the scheduler" in console
    assert console[-2].endswith("dask worker exited with status 0; this machine shuts down")
    assert [p["name"] for p in json.loads((workdir / "boot-report.json").read_text())["phases"]] == \
        ["uv", "python", "packages", "scheduler", "dask"]
    assert any("retiring this worker" in line for line in shipped(cloudwatch, group, "worker"))


@pytest.mark.skipif(not os.access(IMAGE_PYTHON, os.X_OK), reason=f"no {IMAGE_PYTHON} (Debian's) on this machine")
def test_a_gce_scheduler_boots_from_its_startup_script_and_logs_to_cloud_logging(tmp_path, index):
    from coiled_lab.backends.gcp import startup

    from ..gcp.emulator import MetadataServer as GCEMetadata
    from ..gcp.fakegcp import FakeGCP

    fake = FakeGCP()
    instance = {"name": "c1gce-scheduler", "id": "4242", "zone": "zones/us-central1-a",
                "machineType": "zones/us-central1-a/machineTypes/e2-standard-2",
                "networkInterfaces": [{"networkIP": "127.0.0.1", "network": "global/networks/coiled-lab"}]}
    metadata = GCEMetadata(instance, fake.project)
    try:
        config = bootconfig.bootstrap_config("gcp", "c1gce", parse_spec({"backend": "gcp"}), TLSMaterial.generate("c1"),
                                             "scheduler", software={"packages": ["dask==2026.8.0", "distributed==2026.8.0"]},
                                             project=fake.project, log_name="coiled-lab", logging_endpoint=fake.url)
        config.update(index_url=index.simple, python_version="3.11")
        script = tmp_path / "startup-script"
        script.write_text(startup.build(bootconfig.archive(config), config, fake.url))
        bin_dir = tmp_path / "bin"
        bin_dir.mkdir()
        (bin_dir / "shutdown").write_text("#!/bin/sh\necho shutdown \"$@\"\n")
        (bin_dir / "shutdown").chmod(0o755)
        (tmp_path / "tmp").mkdir()
        env = {"PATH": f"{bin_dir}:/usr/bin:/bin", "HOME": str(tmp_path), "TMPDIR": str(tmp_path / "tmp"),
               "LANG": "C.UTF-8", "GCE_METADATA_HOST": metadata.host, "UV_PYTHON_DOWNLOADS": "never"}
        done = subprocess.run(["/bin/sh", str(script)], env=env, cwd=tmp_path, capture_output=True, text=True,
                              timeout=300)
        console = done.stdout.splitlines()
        assert done.returncode == 0, "\n".join(console[-30:])
        assert [p for p, _ in phases(console)] == ["uv", "python", "packages", "dask", "total"]
        logged = [e["textPayload"] for e in fake.entries]
        assert "scheduler c1gce-scheduler (e2-standard-2, us-central1-a, on-demand) of cluster c1gce" in logged[0]
        assert [p for p, _ in phases(logged)] == ["uv", "python", "packages", "dask", "total"]
        assert {e["labels"]["coiled-lab-cluster"] for e in fake.entries} == {"c1gce"}
        # Then it asks Compute to delete it (the fake knows no such VM: it powers off instead).
        assert [c.path for c in fake.calls("compute.instances.delete")] == [
            f"/compute/v1/projects/{fake.project}/zones/us-central1-a/instances/c1gce-scheduler"]
        assert console[-2:] == ["coiled-lab: this VM could not delete itself; it powers off and coiled-lab deletes it",
                                "shutdown -h now"]
    finally:
        metadata.close()
        fake.close()
