"""Admin limits refuse a request before anything is launched, naming the limit."""

import asyncio
import os
import subprocess
import sys

import dask.config
import pytest

from coiled_lab.control.limits import Admission, LimitExceeded, check
from coiled_lab.control.states import State
from coiled_lab.control.store import ClusterRecord
from coiled_lab.spec import parse_spec

from .conftest import cluster_processes


async def free(spec):
    return {"per_hour": 0.0}


def live_record(n: int) -> ClusterRecord:
    return ClusterRecord(id=f"{n:012x}", name=f"live-{n}", backend="local", spec={"n_workers": 1},
                         status=State.running, target="running", message=None, state={}, created_at=0, updated_at=0)


async def admit(spec, live: int, estimate) -> None:
    """What ClusterManager.create asks of the limits, with ``live`` clusters running."""
    admission = Admission(lambda: [live_record(n) for n in range(live)])
    with admission.hold() as weigh:
        weigh(await check(spec, estimate))


def priced(per_worker):
    async def estimate(spec):
        return {"per_hour": per_worker * spec.n_workers}

    return estimate


@pytest.mark.parametrize(
    "limits, fields, live, estimate, limit, field",
    [
        ({"max-workers": 4}, {"n_workers": 5}, 0, free, "max-workers", "n_workers"),
        ({"max-workers": 4}, {"n_workers": [1, 5]}, 0, free, "max-workers", "n_workers"),  # adaptive maximum
        ({"max-clusters": 2}, {"n_workers": 1}, 2, free, "max-clusters", None),
        ({"allowed-instance-types": ["m6i.*"]}, {"backend": "aws", "worker_vm_types": ["m6i.large", "p4d.24xlarge"]},
         0, free, "allowed-instance-types", "worker_vm_types"),
        ({"allowed-instance-types": ["m6i.*"]}, {"backend": "aws", "scheduler_vm_type": "x2iedn.32xlarge"},
         0, free, "allowed-instance-types", "scheduler_vm_type"),
        ({"allowed-regions": ["eu-west-1"]}, {"backend": "aws", "region": "us-east-1"}, 0, free, "allowed-regions",
         "region"),
        ({"max-cost-per-hour": 1.0}, {"backend": "aws", "n_workers": 20}, 0, priced(0.1), "max-cost-per-hour",
         "n_workers"),
        ({}, {"backend": "aws", "allow_ingress_from": "0.0.0.0/0"}, 0, free, "allow-open-ingress",
         "allow_ingress_from"),
        ({}, {"backend": "gcp", "allow_ingress_from": "0.0.0.0/0"}, 0, free, "allow-open-ingress",
         "allow_ingress_from"),
    ],
)
def test_each_limit_is_refused_with_its_name(limits, fields, live, estimate, limit, field):
    with dask.config.set({f"coiled-lab.limits.{k}": v for k, v in limits.items()}):
        with pytest.raises(LimitExceeded) as info:
            asyncio.run(admit(parse_spec(fields), live, estimate))
    assert info.value.limit == limit and info.value.field == field
    assert f"coiled-lab.limits.{limit}" in info.value.message
    assert info.value.to_json()["limit"] == limit


def test_within_limits_passes():
    with dask.config.set({"coiled-lab.limits.max-workers": 4, "coiled-lab.limits.max-cost-per-hour": 1.0}):
        asyncio.run(admit(parse_spec(n_workers=4), 0, priced(0.25)))
    with dask.config.set({"coiled-lab.limits.allow-open-ingress": True}):  # the admin opened it
        asyncio.run(admit(parse_spec(backend="aws", allow_ingress_from="0.0.0.0/0"), 0, free))
    asyncio.run(admit(parse_spec(backend="aws", allow_ingress_from="198.51.100.0/24"), 0, free))


def test_manager_refuses_before_launching_anything(control, state_dir):
    with dask.config.set({"coiled-lab.limits.max-workers": 2, "coiled-lab.limits.max-clusters": 1}):
        with pytest.raises(LimitExceeded, match="max-workers"):
            control.run(control.create({"n_workers": 3}))
        assert control.run(control.list()) == [] and cluster_processes(state_dir) == []
        first = control.run(control.create({"n_workers": 1}))
        with pytest.raises(LimitExceeded, match="max-clusters"):
            control.run(control.create({"n_workers": 1}))
        with pytest.raises(LimitExceeded, match="max-workers"):
            control.run(control.scale(first["id"], 3))
        assert len(control.run(control.list())) == 1
        control.run(control.stop(first["id"]))
        control.run(control.wait(first["id"], ("stopped",), 30))


def test_limits_set_by_environment_variables():
    """As an admin sets them for a Jupyter server (DASK_COILED_LAB__LIMITS__MAX_WORKERS), in
    a fresh process: dask reads the environment when it is imported, before coiled-lab's
    defaults exist, and keeps those keys spelt with underscores."""
    script = (
        "import asyncio\n"
        "from coiled_lab.control.limits import LimitExceeded, check\n"
        "from coiled_lab.spec import parse_spec\n"
        "async def free(spec):\n"
        "    return {'per_hour': 0.0}\n"
        "for fields in ({'n_workers': 7}, {'backend': 'aws', 'worker_vm_types': ['c6i.xlarge']}):\n"
        "    try:\n"
        "        asyncio.run(check(parse_spec(fields), free))\n"
        "        print('allowed')\n"
        "    except LimitExceeded as exc:\n"
        "        print(exc.limit)\n"
    )
    env = {**os.environ, "DASK_COILED_LAB__LIMITS__MAX_WORKERS": "6",
           "DASK_COILED_LAB__LIMITS__ALLOWED_INSTANCE_TYPES": '["m6i.*"]'}
    out = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, check=True).stdout
    assert out.split() == ["max-workers", "allowed-instance-types"]


def test_total_cost_counts_every_live_cluster_and_a_scale_replaces_its_own_share():
    live = [live_record(n) for n in range(3)]
    for rec in live:
        rec.state["admitted_per_hour"] = 1.0
    admission = Admission(lambda: live)
    with dask.config.set({"coiled-lab.limits.max-total-cost-per-hour": 3.5}):
        with admission.hold() as weigh:
            weigh(0.5)  # 3.0 live + 0.5 fits
            with pytest.raises(LimitExceeded, match=r"admitted at \$3.50/hour") as refused:
                with admission.hold() as other:  # a create racing the first one counts it
                    other(0.1)
        assert refused.value.limit == "max-total-cost-per-hour"
        with admission.hold(replacing=live[0]) as weigh:
            weigh(1.5)  # its own 1.0 is replaced: 2.0 + 1.5 fits
        with pytest.raises(LimitExceeded, match="max-total-cost-per-hour"):
            with admission.hold(replacing=live[0]) as weigh:
                weigh(1.6)
    with dask.config.set({"coiled-lab.limits.max-total-cost-per-hour": 1.0}):
        with admission.hold(replacing=live[0]) as weigh:
            weigh(0.5)  # already over the ceiling, yet scaling down is always allowed
