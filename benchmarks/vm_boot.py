"""Boot of a bare VM, phase by phase: from the create request (the scheduler's CreateFleet
or bulkInsert follows at once) to the first dask worker registered, on "EC2" (moto + the
EC2 emulator) and "GCE" (the fake + the GCE emulator), both booting bare Debian 12 VMs
(tests/vm; root only).

Three runs: ``dask-only`` (package_sync off: the VMs install dask and distributed at this
environment's versions); the first cluster of a data-science kernel's environment (a uv
venv of :data:`DATA_SCIENCE`, ~140 distributions, as its kernel sends it: the scheduler
installs it and uploads its image to the bucket while its worker waits for it); and the
same environment again, a cache hit (every VM mounts the image). For each it prints the boot lines of the
scheduler's and the first worker's console (uv, Python, packages or environment, dask),
then one line::

    boot: <seconds> s to first worker, <bytes> downloaded from the package index

and, at the end, the cache hit's time over the dask-only one (target: at most 1.3).
Bytes are what the VMs fetched from the index through the emulated network's egress
proxy (its pull-through cache included: a real VM downloads them all itself). The first
run on a machine also builds the image (~30 s) and fills the proxy's cache.

Usage (from the repository root, as root):
    python benchmarks/vm_boot.py [--cloud aws|gcp|both] [--env dask-only|kernel|both]
(``kernel``: the data-science environment's first cluster and its cache hit.)
"""

from __future__ import annotations

import argparse
import re
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

sys.path.insert(0, str(Path(__file__).resolve().parent))

# The names VMs reach the cloud's stand-ins by (moto, the GCP fake), through the same proxy.
EMULATORS = ("aws.emulator", "gcp.emulator")
BOOT_LINE = re.compile(r"boot: (?P<phase>[a-z]+)\b(?P<details>.*) in (?P<seconds>[0-9]+\.[0-9]) s$")


def phases(console: str) -> list[str]:
    return [m.group(0) for line in console.splitlines() if (m := BOOT_LINE.search(line))]


def boot_once(control, network, consoles: Callable[[str], dict[str, str]], backend: str, package_sync: bool,
              environment=None, built: Callable[[str], bool] = lambda env_hash: True) -> float:
    """One cluster (scheduler + 1 worker) from the create request to its first worker;
    ``consoles(cluster_id)``: each role's console text. A cluster that builds a new
    environment is stopped only once ``built(hash)``: its scheduler uploads the image
    while it runs. Returns the seconds to the first worker (nan if it did not start)."""
    from coiled_lab.spec import ClusterSpecError

    network.reset_counters()
    start = time.perf_counter()
    try:
        cluster = control.run(control.create({"backend": backend, "n_workers": 1, "package_sync": package_sync},
                                             environment))
    except ClusterSpecError as exc:
        print(f"  refused before launch: {exc}")
        return float("nan")
    record = control.run(control.wait(cluster["id"], timeout=900))
    elapsed = time.perf_counter() - start
    try:
        if record["status"] != "running":
            print(f"  {record['status']}: {record.get('message')}")
            return float("nan")
        for role, console in consoles(cluster["id"]).items():
            for line in phases(console):
                print(f"  {role:9} {line}")
        counted = {**network.downloaded()}
        for host, size in network.from_cache().items():
            counted[host] = counted.get(host, 0) + size
        stand_ins = sum(n for h, n in counted.items() if h.split(":")[0] in EMULATORS)  # the bucket, the logs
        fetched = sum(counted.values()) - stand_ins
        print(f"boot: {elapsed:.1f} s to first worker, {fetched} downloaded from the package index "
              f"({stand_ins} from the cloud's stand-in: the bucket, the log service)")
        env_hash = control.manager.store.get_cluster(cluster["id"]).state.get("environment")
        if env_hash and not built(env_hash):
            waited = time.perf_counter()
            while not built(env_hash) and time.perf_counter() - waited < 900:
                time.sleep(2)
            print(f"  the scheduler's upload of environment {env_hash} was there {time.perf_counter() - start:.1f} s "
                  "after the create request")
        return elapsed
    finally:
        control.run(control.stop(cluster["id"]))
        control.run(control.wait(cluster["id"], ("stopped",), timeout=120))


# A notebook kernel's data-science environment (~140 distributions with their dependencies).
DATA_SCIENCE = ["pandas", "pyarrow", "scikit-learn", "matplotlib", "seaborn", "xarray", "zarr", "s3fs", "gcsfs",
                "ipykernel", "statsmodels", "numba", "plotly", "h5py", "netCDF4", "boto3", "sqlalchemy", "polars",
                "duckdb", "altair", "requests", "tqdm", "rich", "pydantic"]


def kernel_environment(work: Path) -> dict:
    """The environment a kernel of a uv venv with :data:`DATA_SCIENCE` (and this dask) sends."""
    import subprocess
    from importlib import metadata

    from tests.envsync import snapshot_of

    venv = work / "kernel"
    subprocess.run(["uv", "venv", "-q", str(venv)], check=True)
    subprocess.run(["uv", "pip", "install", "-q", "--python", str(venv / "bin" / "python"),
                    f"dask[complete]=={metadata.version('dask')}", f"distributed=={metadata.version('distributed')}",
                    *DATA_SCIENCE, "pyyaml", "pathspec"], check=True)  # (and what coiled-lab itself needs there)
    (work / "notebooks").mkdir(exist_ok=True)
    return snapshot_of(venv / "bin" / "python", work / "notebooks")


def runs(env: str, control, built: Callable[[str], bool], backend: str, network, consoles) -> None:
    """The dask-only run and/or the kernel environment's first cluster and cache hit."""
    times: dict[str, float] = {}
    if env in ("dask-only", "both"):
        print(f"{backend}, dask-only environment:")
        times["dask-only"] = boot_once(control, network, consoles, backend, False)
    if env in ("kernel", "both"):
        with tempfile.TemporaryDirectory(prefix="coiled-lab-kernel-") as work:
            kernel = kernel_environment(Path(work))
        env_hash = control.run(control.stage_environment(kernel))["hash"]
        print(f"{backend}, a data-science kernel's environment ({len(kernel['packages'])} distributions), "
              "first cluster:")
        boot_once(control, network, consoles, backend, True, env_hash, built)
        print(f"{backend}, the same environment, cache hit:")
        times["cached"] = boot_once(control, network, consoles, backend, True, env_hash, built)
    if len(times) == 2:
        print(f"{backend}: cache hit / dask-only = {times['cached'] / times['dask-only']:.2f} (target <= 1.3)")


def on_aws(env: str) -> None:
    from emulated_aws import REGION, emulated_aws

    from coiled_lab.backends.envstore import ARCHIVE
    from tests.aws.conftest import TEST_CONFIG, Moto

    # A first cluster of a big environment installs it on the scheduler and uploads it while
    # its worker waits: longer than the tests' start timeout.
    with emulated_aws("coiled-lab-vm-boot-", {**TEST_CONFIG, "coiled-lab.aws.start-timeout": 900}) as aws:
        moto = Moto(aws.moto_url)

        def consoles(cluster_id: str) -> dict[str, str]:
            return {role: aws.emulator.console(moto.instances(cluster_id, role)[0]["InstanceId"]) or ""
                    for role in ("scheduler", "worker")}

        s3 = moto.client("s3")
        bucket = f"coiled-lab-envs-{moto.client('sts').get_caller_identity()['Account']}-{REGION}"

        def built(env_hash: str) -> bool:
            return bool(s3.list_objects_v2(Bucket=bucket, Prefix=ARCHIVE.format(hash=env_hash)).get("KeyCount"))

        runs(env, aws.control, built, "aws", aws.network, consoles)


def on_gcp(env: str) -> None:
    from emulated_gcp import emulated_gcp
    from tests.gcp.conftest import labelled
    from tests.gcp.fakegcp import PROJECT

    from coiled_lab.backends.envstore import ARCHIVE

    with emulated_gcp("coiled-lab-vm-boot-", {"coiled-lab.gcp.start-timeout": 900}) as gcp:
        def consoles(cluster_id: str) -> dict[str, str]:
            return {role: gcp.emulator.console(labelled(gcp.fake, cluster_id, role)[0]["name"]) or ""
                    for role in ("scheduler", "worker")}

        def built(env_hash: str) -> bool:
            return ARCHIVE.format(hash=env_hash) in gcp.fake.objects.get(f"coiled-lab-envs-{PROJECT}", {})

        runs(env, gcp.control, built, "gcp", gcp.network, consoles)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cloud", choices=("aws", "gcp", "both"), default="both")
    parser.add_argument("--env", choices=("dask-only", "kernel", "both"), default="both")
    args = parser.parse_args()
    if args.cloud in ("aws", "both"):
        on_aws(args.env)
    if args.cloud in ("gcp", "both"):
        on_gcp(args.env)


if __name__ == "__main__":
    main()
