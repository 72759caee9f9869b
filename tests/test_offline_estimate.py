"""Estimates and the form's type list with no credentials and no network, through the real
AWS and GCP backends and the CLI as a user runs it: the bundled snapshot answers, labelled
with its date, at each region's own prices, within ``pricing.timeout`` seconds."""

from __future__ import annotations

import json
import subprocess
import sys
import time

import pytest

from coiled_lab import config, price_snapshot

LIMIT = 10.0  # seconds an estimate may take whatever the price sources do (the bound)


def _snapshot_label(cloud: str) -> str:
    return f"prices as of {price_snapshot.as_of(cloud)}, not live"


def test_aws_estimate_and_type_list_without_credentials(no_cloud, control):
    """Each region at its own price; the form's list holds the default types with sizes."""
    per_region = {}
    for region in ("us-east-1", "eu-west-1"):
        started = time.monotonic()
        est = control.run(control.estimate({"backend": "aws", "n_workers": 10, "worker_vm_types": ["m6i.xlarge"],
                                            "region": region}))
        assert time.monotonic() - started < LIMIT
        worker, _ = price_snapshot.aws_on_demand(region, "m6i.xlarge")
        scheduler, _ = price_snapshot.aws_on_demand(region, config.get("aws.scheduler-vm-type"))
        assert est["source"] == f"snapshot: {_snapshot_label('aws')}"
        assert est["worker_each"] == worker and est["per_hour"] == pytest.approx(scheduler + 10 * worker)
        assert any("no credentials found" in n for n in est["notes"])
        assert any("disks are not included" in n for n in est["notes"])  # their size is the image's
        per_region[region] = est["per_hour"]
    assert per_region["eu-west-1"] > per_region["us-east-1"]

    sized = control.run(control.estimate({"backend": "aws", "n_workers": 2, "worker_cpu": 8, "worker_memory": "60 GiB"}))
    assert sized["worker_vm_type"].split(".")[1] == "2xlarge" and sized["worker_vm_type"].startswith("r")

    catalog = control.run(control.catalog("aws", "eu-west-1"))
    assert catalog["source"] == f"snapshot: {_snapshot_label('aws')}" and "no credentials found" in catalog["offline"]
    types = {t["name"]: t for t in catalog["instance_types"]}
    for name in [config.get("aws.scheduler-vm-type"), *config.get("aws.worker-vm-types")]:
        assert types[name]["vcpu"] >= 2 and types[name]["memory"] >= 8 * 2**30
        assert types[name]["price_per_hour"] == price_snapshot.aws_on_demand("eu-west-1", name)[0]


def test_max_cost_per_hour_is_checked_without_credentials(no_cloud, control):
    import dask.config

    from coiled_lab.control.limits import LimitExceeded

    with dask.config.set({"coiled-lab.limits.max-cost-per-hour": 1.0}):
        with pytest.raises(LimitExceeded, match="max-cost-per-hour"):
            control.run(control.create({"backend": "aws", "n_workers": 10, "worker_vm_types": ["m6i.xlarge"]}))
    assert control.run(control.list()) == []


def test_gcp_estimate_and_type_list_without_adc(no_cloud, control):
    started = time.monotonic()
    est = control.run(control.estimate({"backend": "gcp", "n_workers": 4, "region": "europe-west1"}))
    assert time.monotonic() - started < LIMIT
    table, as_of = price_snapshot.gcp_table("europe-west1")
    worker = config.get("gcp.worker-vm-types")[0]
    size = price_snapshot.gcp_types()[worker]
    family = worker.split("-")[0]
    each = size["vcpus"] * table["cores"][family]["on-demand"] + size["memory_mib"] / 1024 * table["ram"][family][
        "on-demand"]
    assert est["worker_vm_type"] == worker and est["worker_each"] == pytest.approx(each)
    assert est["source"] == f"snapshot: prices as of {as_of}, not live"
    disks = table["disks"][config.get("gcp.disk-type")] * config.get("gcp.disk-size-gb") * 5 / 730
    assert est["storage"] == pytest.approx(disks)  # the disks' size is the config's: known offline

    catalog = control.run(control.catalog("gcp", "europe-west1"))
    names = {t["name"] for t in catalog["instance_types"]}
    assert {config.get("gcp.scheduler-vm-type"), *config.get("gcp.worker-vm-types")} <= names
    assert catalog["source"].startswith("snapshot: prices as of")


def _cli(args: list[str], env: dict[str, str]) -> tuple[subprocess.CompletedProcess, float]:
    started = time.monotonic()
    done = subprocess.run([sys.executable, "-m", "coiled_lab.cli", "estimate", *args, "--json"], capture_output=True,
                          text=True, timeout=60, env=env)
    return done, time.monotonic() - started


@pytest.mark.parametrize("case", ["aws-no-credentials", "aws-fake-keys-unreachable", "gcp-no-adc"])
def test_cli_estimate_offline(no_cloud, state_dir, case):
    """`coiled-lab estimate 10 ...` on a machine that was never set up (or cannot reach the
    cloud): a dated estimate from the snapshot, never a traceback, in a few seconds."""
    env = {**no_cloud, "DASK_COILED_LAB__STATE_DIR": str(state_dir)}
    if case == "aws-fake-keys-unreachable":
        env.update(AWS_ACCESS_KEY_ID="AKIAFAKEFORTESTS0000", AWS_SECRET_ACCESS_KEY="fake",
                   AWS_ENDPOINT_URL="http://127.0.0.1:9")  # nothing listens there
    args = ["10", "--backend", "gcp"] if case == "gcp-no-adc" else ["10", "--backend", "aws", "--vm-type", "m6i.xlarge"]
    done, took = _cli(args, env)
    assert done.returncode == 0 and "Traceback" not in done.stderr, done.stderr
    est = json.loads(done.stdout)
    cloud = case.split("-")[0]
    assert est["source"].startswith("snapshot: prices as of") and est["n_workers"] == 10
    assert est["per_hour"] > 0 and took < LIMIT + 2  # (+ the interpreter's start)
    if cloud == "aws":
        assert est["worker_each"] == price_snapshot.aws_on_demand(config.get("aws.region"), "m6i.xlarge")[0]
