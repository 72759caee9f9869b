"""Coiled's keyword names with Coiled's meaning (issue 20): validated into ClusterSpec,
refused with one line where they make no sense here, and honoured by real dask processes
on the local backend (adaptive bounds, worker options, the scheduler's idle timeout)."""

from __future__ import annotations

import json
import time

import dask.config
import pytest

from coiled_lab import Cluster
from coiled_lab.backends.local import LocalBackend
from coiled_lab.options import build_parser, spec_fields
from coiled_lab.spec import ClusterSpecError, parse_spec

from .conftest import cluster_processes, wait_for


# -- validation: no process, no I/O -------------------------------------------------------
@pytest.mark.parametrize("given, field, says", [
    ({"n_workers": [5, 2]}, "n_workers", "min <= max"),
    ({"n_workers": [1, 2, 3]}, "n_workers", "[min, max]"),
    ({"n_workers": "2:x"}, "n_workers", "not allowed"),
    ({"worker_options": {"nthreads": -1}}, "worker_options", "nthreads"),
    ({"worker_options": {"threads": 2}}, "worker_options", "allowed: nthreads, memory_limit"),
    ({"backend_options": {"colour": "red"}}, "backend_options", "unknown key 'colour'"),
    ({"backend_options": {"ingress": []}}, "backend_options", "allow_ingress_from"),
    ({"backend": "aws", "compute_purchase_option": "spot", "spot_policy": "on-demand"},
     "compute_purchase_option", "spot_policy disagree"),
    ({"backend": "aws", "backend_options": {"region_name": "eu-west-1"}, "region": "us-east-1"},
     "backend_options", "region disagree"),
    ({"scheduler_options": {"idle_timeout": "1h"}, "idle_timeout": "2h"}, "scheduler_options", "disagree"),
    ({"scheduler_options": {"port": 8786}}, "scheduler_options", "allowed: idle_timeout"),
    ({"account": "my-team"}, "account", "no Coiled accounts"),
    ({"workspace": "my-team"}, "workspace", "no Coiled workspaces"),
    ({"use_dashboard_https": True}, "use_dashboard_https", "through this Jupyter server"),
    ({"container": "ghcr.io/dask/dask"}, "container", "package_sync"),
    ({"package_sync_fail_on": "always"}, "package_sync_fail_on", "critical-only"),
    ({"backend": "aws", "zone": "us-east-1a", "use_best_zone": True}, "use_best_zone", "give one of them"),
    ({"backend": "aws", "scheduler_vm_types": ["m6i.large", "m5.large"]}, "scheduler_vm_types", "one"),
    ({"backend": "aws", "scheduler_vm_type": "m6i.large", "scheduler_cpu": 4}, "scheduler_cpu", "not both"),
    ({"backend": "aws", "allow_ssh_from": "everyone"}, "allow_ssh_from", "CIDR"),
    ({"worker_class": "distributed.Thing"}, "worker_class", "not allowed"),
    ({"backend": "aws", "worker_class": "dask_cuda.CUDAWorker"}, "worker_class", "worker_gpu"),
    ({"backend": "aws", "arm": True, "worker_gpu": 1}, "arm", "x86_64"),
])
def test_bad_input_is_one_line_naming_the_field(given, field, says):
    with pytest.raises(ClusterSpecError) as info:
        parse_spec(given)
    assert info.value.field == field
    assert says in info.value.message
    assert "\n" not in info.value.message


@pytest.mark.parametrize("given, field", [({"worker_disk_size": 100}, "worker_disk_size"),
                                          ({"allow_ssh_from": "10.0.0.0/8"}, "allow_ssh_from")])
def test_cloud_only_names_are_refused_by_the_local_backend(given, field):
    """Valid specs the local backend refuses (its check_spec, before anything is recorded)."""
    with pytest.raises(ClusterSpecError) as info:
        LocalBackend().check_spec(parse_spec(given))
    assert info.value.field == field
    assert f"the local backend has no {field}" in info.value.message and "\n" not in info.value.message


def test_coiled_names_map_onto_fields():
    spec = parse_spec(backend="aws", n_workers=[2, 10], compute_purchase_option="spot_with_fallback",
                      backend_options={"region_name": "eu-west-1", "zone_name": "eu-west-1b", "multizone": True},
                      scheduler_options={"idle_timeout": "2 hours"}, scheduler_vm_types=["m6i.large"],
                      worker_disk_size="200 GiB", use_best_zone=False, arm=True, allow_ssh_from="203.0.113.7/32",
                      worker_options={"nthreads": "2", "memory_limit": "4 GiB"})
    assert (spec.n_workers, spec.adaptive, spec.spot_policy) == (2, [2, 10], "spot_with_fallback")
    assert (spec.region, spec.zone, spec.allow_cross_zone) == ("eu-west-1", "eu-west-1b", True)
    assert (spec.idle_timeout, spec.scheduler_vm_type, spec.worker_disk_size) == (7200.0, "m6i.large", 200)
    assert spec.worker_options == {"nthreads": 2, "memory_limit": 4 * 2**30}
    assert spec.allow_ssh_from == "203.0.113.7/32" and spec.arm and not spec.use_best_zone
    # backend_options' spot flags are spot_policy; agreeing spellings are no conflict.
    assert parse_spec(backend="aws", backend_options={"spot": True}).spot_policy == "spot"
    assert parse_spec(backend="aws", backend_options={"spot": False}, spot_policy="on-demand").spot_policy == "on-demand"
    assert parse_spec(scheduler_options={"idle_timeout": "1h"}, idle_timeout=3600).idle_timeout == 3600.0


def test_a_scale_outside_the_adaptive_bounds_is_refused():
    from coiled_lab.spec import revise

    stored = parse_spec(n_workers=[1, 3]).public()
    assert revise(stored, {"n_workers": 3}).adaptive == [1, 3]
    with pytest.raises(ClusterSpecError, match="adapts between 1 and 3 workers"):
        revise(stored, {"n_workers": 7})
    assert revise(stored, {"n_workers": [0, 8]}).adaptive == [0, 8]  # new bounds replace the stored ones


def test_the_command_line_takes_the_same_names():
    parser = build_parser("coiled-lab", cli=True)
    ns = parser.parse_args(["start", "2:10", "--compute-purchase-option", "spot_with_fallback", "--backend", "aws",
                            "--backend-options", "region_name=eu-west-1", "--scheduler-options", "idle_timeout=1h",
                            "--worker-options", "nthreads=2", "--arm", "--allow-ssh-from", "10.0.0.0/8"])
    spec = parse_spec(spec_fields(ns))
    assert (spec.n_workers, spec.adaptive, spec.spot_policy, spec.region) == (2, [2, 10], "spot_with_fallback",
                                                                              "eu-west-1")
    assert (spec.idle_timeout, spec.worker_options, spec.arm) == (3600.0, {"nthreads": 2}, True)


def test_wait_for_workers_takes_coiled_values_only(control):
    with pytest.raises(ClusterSpecError, match="wait_for_workers"):
        Cluster(n_workers=1, wait_for_workers=1.5, control=control)
    assert control.run(control.list()) == []  # nothing was asked for


# -- real dask processes on the local backend ---------------------------------------------
@pytest.mark.slow
def test_worker_options_reach_the_workers(control, state_dir):
    with Cluster(n_workers=2, worker_options={"nthreads": 3, "memory_limit": "1 GiB"}, control=control,
                 worker_class="distributed.Nanny") as cluster:
        client = cluster.get_client()
        workers = client.scheduler_info()["workers"].values()
        assert [w["nthreads"] for w in workers] == [3, 3]
        assert {w["memory_limit"] for w in workers} == {2**30}
        # A nanny (distributed.Nanny) stands behind each worker: it restarts one that dies.
        assert all(w.get("nanny") for w in workers)
        assert client.submit(sum, [1, 2, 3]).result() == 6
        client.close()


@pytest.mark.slow
def test_scheduler_options_idle_timeout_is_honoured(control, state_dir):
    cluster = control.run(control.create({"n_workers": 1, "scheduler_options": {"idle_timeout": "3s"},
                                          "no_client_timeout": "off"}))
    assert cluster["spec"]["idle_timeout"] == 3.0
    assert control.run(control.wait(cluster["id"], timeout=60))["status"] == "running"
    final = control.run(control.wait(cluster["id"], ("stopped",), 60))
    assert final["status"] == "stopped" and "idle_timeout" in final["message"]


@pytest.mark.slow
def test_adaptive_reaches_both_bounds(control, state_dir):
    """The control plane, not the kernel, adapts: work queued grows the cluster to its
    maximum; idle, it shrinks back to its minimum."""
    with dask.config.set({"coiled-lab.adaptive.interval": 0.2, "coiled-lab.adaptive.wait-count": 2}):
        with Cluster(n_workers=[1, 3], worker_options={"nthreads": 1}, control=control) as cluster:
            assert cluster.record["workers"]["target"] == 1
            client = cluster.get_client()
            futures = client.map(time.sleep, [0.5] * 60, pure=False)
            wait_for(lambda: len(client.scheduler_info()["workers"]) == 3, timeout=90, what="3 workers")
            assert control.run(control.get(cluster.cluster_id))["spec"]["n_workers"] == 3
            client.gather(futures)
            del futures
            wait_for(lambda: len(client.scheduler_info()["workers"]) == 1, timeout=90, what="back to 1 worker")
            wait_for(lambda: len(cluster_processes(state_dir)) == 2, timeout=30, what="1 worker process")
            record = control.run(control.wait(cluster.cluster_id, ("running",), 30))
            assert record["spec"]["adaptive"] == [1, 3] and record["workers"]["target"] == 1
            client.close()


@pytest.mark.slow
def test_a_script_written_for_coiled_runs_here(state_dir):
    """tests/coiled_style.py, a dozen of Coiled's names, in its own process."""
    import subprocess
    import sys
    from pathlib import Path

    script = Path(__file__).with_name("coiled_style.py")
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=300,
                          cwd=state_dir.parent)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "coiled-style script: done" in done.stdout
    assert not cluster_processes(state_dir)


@pytest.mark.slow
def test_cli_start_takes_coiled_names_and_refuses_bad_ones_in_one_line(state_dir):
    from .test_cli import cli

    refused = cli("start", "5:2")
    assert refused.returncode == 2 and refused.stderr.count("\n") == 1
    assert refused.stderr.startswith("error: N_WORKERS: '5:2' is not allowed")
    refused = cli("start", "1", "--backend-options", "colour=red")
    assert refused.returncode == 2 and "--backend-options" in refused.stderr and "unknown key 'colour'" in refused.stderr
    assert not cluster_processes(state_dir)

    started = cli("start", "1:2", "--name", "coiled-cli", "--compute-purchase-option", "on-demand",
                  "--worker-options", "nthreads=1", "--scheduler-options", "idle_timeout=30m", "--json")
    assert started.returncode == 0, started.stderr
    spec = json.loads(started.stdout)["spec"]
    assert (spec["n_workers"], spec["adaptive"], spec["worker_options"], spec["idle_timeout"]) == \
        (1, [1, 2], {"nthreads": 1}, 1800)
    assert cli("stop", "coiled-cli").returncode == 0


def test_list_instance_types_filters_and_says_where_the_list_came_from(state_dir, no_cloud):
    from coiled_lab import list_instance_types

    here = list_instance_types(backend="local", cores=[1, 4096])
    assert list(here) == ["local-process"] and here.source.startswith("live: ")
    assert list_instance_types(backend="local", cores=[5000, 6000]) == {}
    # No AWS credentials here: the bundled snapshot answers, and says so.
    offline = list_instance_types(backend="aws", region="us-east-1", cores=4, memory=["8 GiB", "32 GiB"],
                                  arch="x86_64")
    assert offline and offline.source.startswith("snapshot: ") and offline.offline
    assert all(t["cores"] == 4 and 8 * 2**30 <= t["memory"] <= 32 * 2**30 for t in offline.values())
    assert "snapshot" in repr(offline).split(">")[0]
    for bad, field in (({"cores": [5, 2]}, "cores"), ({"memory": "lots"}, "memory"), ({"arch": "sparc"}, "arch"),
                       ({"gpus": [1, 2, 3]}, "gpus")):
        with pytest.raises(ClusterSpecError) as refused:
            list_instance_types(backend="local", **bad)
        assert refused.value.field == field


@pytest.mark.slow
def test_the_readme_cell_written_for_coiled_runs_here(state_dir):
    """README's "Coming from Coiled" cell, as it is, on the default (local) backend."""
    import re
    import subprocess
    import sys
    from pathlib import Path

    readme = (Path(__file__).parents[1] / "README.md").read_text()
    section = readme.split("## Coming from Coiled", 1)[1]
    cell = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    assert cell.startswith("import coiled_lab as coiled  # was: import coiled\n")
    done = subprocess.run([sys.executable, "-c", cell + "cluster.close()\n"], capture_output=True, text=True,
                          timeout=300, cwd=state_dir.parent)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.splitlines()[0] == "45" and "local-process" in done.stdout
    assert not cluster_processes(state_dir)


@pytest.mark.slow
def test_the_magic_takes_the_same_names(state_dir):
    from IPython.testing.globalipapp import get_ipython

    from coiled_lab.control.inprocess import InProcessControl

    InProcessControl.reset_shared()
    shell = get_ipython()
    shell.run_line_magic("load_ext", "coiled_lab")
    cluster = shell.run_line_magic("coiled", "start 1:2 --name nb-coiled --compute-purchase-option on-demand "
                                             "--worker-options nthreads=1 --no-client")
    assert cluster.record["spec"]["adaptive"] == [1, 2] and cluster.record["spec"]["worker_options"] == {"nthreads": 1}
    shell.run_line_magic("coiled", "stop nb-coiled")
    wait_for(lambda: not cluster_processes(state_dir), timeout=15, what="no process left")
    InProcessControl.reset_shared()
