"""Limits on all live clusters together hold when creates race: 20 POST /clusters at once
against a real Jupyter server admit exactly what ``max-clusters`` and
``max-total-cost-per-hour`` allow.

On AWS (moto over HTTP, prices from the tests' Price List stand-in) each create awaits the
cloud (credentials, the estimate) before it records its cluster: that is the window in
which all 20 used to be admitted. On the local backend nothing yields there; the test
keeps it so.
"""

from __future__ import annotations

import asyncio
import math
from typing import Any

import dask.config
import pytest

from .test_fuzz_cloud import counted_aws, jp_server_config  # noqa: F401 - moto and the server's AWS keys

pytestmark = pytest.mark.slow

RACERS = 20
AWS_SPEC = {"backend": "aws", "n_workers": 1, "worker_vm_types": ["m6i.large"], "scheduler_vm_type": "m6i.large",
            "package_sync": False, "allow_ingress_from": "10.0.0.0/8"}


async def race(api: Any, spec: dict[str, Any]) -> list[tuple[int, Any]]:
    """RACERS creates of ``spec`` sent at once; their answers."""
    return list(await asyncio.gather(*(api("POST", "coiled-lab/api/clusters", body=spec) for _ in range(RACERS))))


def admitted(answers: list[tuple[int, Any]], limit: str) -> list[dict]:
    """The created records; every other answer must be the limit's refusal."""
    refused = [reply for code, reply in answers if code != 201]
    assert all(reply.get("limit") == limit for reply in refused), refused
    return [reply for code, reply in answers if code == 201]


async def test_max_clusters_holds_under_concurrent_creates_on_aws(service, api, counted_aws):  # noqa: F811
    with dask.config.set({"coiled-lab.limits.max-clusters": 3}):
        created = admitted(await race(api, AWS_SPEC), "max-clusters")
    assert len(created) == 3
    live = (await service.manager()).store.list_clusters(live_only=True)
    assert sorted(r.id for r in live) == sorted(c["id"] for c in created)


async def test_total_cost_ceiling_holds_under_concurrent_creates_on_aws(service, api, counted_aws):  # noqa: F811
    code, estimate = await api("POST", "coiled-lab/api/estimate", body=AWS_SPEC)
    assert code == 200 and estimate["per_hour"] > 0, estimate
    ceiling = 3.5 * estimate["per_hour"]
    with dask.config.set({"coiled-lab.limits.max-total-cost-per-hour": ceiling}):
        created = admitted(await race(api, AWS_SPEC), "max-total-cost-per-hour")
    assert len(created) == math.floor(ceiling / estimate["per_hour"]) == 3


async def test_max_clusters_holds_under_concurrent_creates_on_local(service, api):
    # A per-cluster cost limit too: its estimate is one more await inside the window.
    with dask.config.set({"coiled-lab.limits.max-clusters": 3, "coiled-lab.limits.max-cost-per-hour": 1.0}):
        created = admitted(await race(api, {"backend": "local", "n_workers": 0}), "max-clusters")
    assert len(created) == 3
    manager = await service.manager()
    for record in created:
        await manager.stop(record["id"])
    for record in created:
        assert (await manager.wait(record["id"], ("stopped",), 60))["status"] == "stopped"
