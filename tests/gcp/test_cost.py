"""GCP cost through the real GCP backend: prices from the Cloud Billing Catalog API (the
tests' catalog mounted on the fake Google Cloud server, asked with the backend's own
credentials), the estimate checked by hand, the $/hour limit refused before any Compute
call, and an emulated cluster's accrued cost priced from the catalog with no estimate
made first."""

from __future__ import annotations

import re

import dask.config
import pytest

from coiled_lab import Cluster
from coiled_lab.control.limits import LimitExceeded
from coiled_lab.pricing import BILLING_CATALOG, HOURS_PER_MONTH, MINIMUM_BILLED_SECONDS

from ..conftest import wait_for
from ..gcpbilling import SKUS_PATH, skus_page
from ..test_pricing_gcp import E2_CORE, E2_RAM, N2_CORE, N2_RAM, N2_SPOT_CORE, N2_SPOT_RAM, PAGES

LIST_SKUS = "cloudbilling.services.skus.list"
SPEC = {"backend": "gcp", "n_workers": 4, "worker_vm_types": ["n2-standard-4"], "scheduler_vm_type": "e2-standard-2"}
SCHEDULER, WORKER, WORKER_SPOT = 2 * E2_CORE + 8 * E2_RAM, 4 * N2_CORE + 16 * N2_RAM, 4 * N2_SPOT_CORE + 16 * N2_SPOT_RAM


@pytest.fixture
def billing(fake):
    """The billing catalog on the fake's own server (its tokens), for this test."""
    fake.route("GET", re.escape(SKUS_PATH), lambda request: skus_page(request.query), LIST_SKUS)
    with dask.config.set({"coiled-lab.gcp.endpoints.billing": fake.url}):
        yield fake


def test_estimate_from_the_catalog_and_the_limit_before_any_compute_call(gcp_control, billing):
    before = billing.count(LIST_SKUS)
    est = gcp_control.run(gcp_control.estimate({**SPEC, "spot_policy": "spot"}))
    disks = 0.10 * 50 * 5 / HOURS_PER_MONTH  # pd-balanced, 50 GB each (the backend's config)
    assert est["source"] == BILLING_CATALOG and (est["worker_vm_type"], est["scheduler_vm_type"]) == \
        ("n2-standard-4", "e2-standard-2")
    assert est["scheduler"] == pytest.approx(SCHEDULER) and est["worker_each"] == pytest.approx(WORKER_SPOT)
    assert est["spot_savings"] == pytest.approx(4 * (WORKER - WORKER_SPOT))
    assert est["storage"] == pytest.approx(disks)
    assert est["per_hour"] == pytest.approx(SCHEDULER + 4 * WORKER_SPOT + disks)
    asked = billing.calls(LIST_SKUS)[before:]
    assert len(asked) == PAGES and {c.token for c in asked} <= billing.tokens  # the backend's credentials

    before, calls = billing.count(LIST_SKUS), billing.count()
    with dask.config.set({"coiled-lab.limits": {"max-cost-per-hour": 0.5}}):
        with pytest.raises(LimitExceeded, match="max-cost-per-hour"):
            gcp_control.run(gcp_control.create(SPEC))
    made = [c.id for c in billing.calls()[calls:]]
    assert billing.count(LIST_SKUS) == before  # priced from the store's cache
    assert not [m for m in made if re.search(r"\.(insert|bulkInsert|delete|patch|set\w*)$", m)], made
    assert gcp_control.run(gcp_control.list()) == []


@pytest.mark.slow
def test_accrued_cost_is_priced_from_the_catalog_without_an_estimate(gcp_control, emulator, billing):
    before = billing.count(LIST_SKUS)
    with Cluster(control=gcp_control, timeout=120, **{**SPEC, "n_workers": 1}) as cluster:
        cid = cluster.cluster_id
        running = wait_for(lambda: (c := gcp_control.run(gcp_control.get(cid))["cost"]) and c["per_hour"] > 0 and c,
                           timeout=60, what="a cost with $/hour")
        assert running["per_hour"] == pytest.approx(SCHEDULER + WORKER)
        assert billing.count(LIST_SKUS) - before == PAGES  # asked by the accrued cost itself
    final = cluster.record["cost"]
    assert final["per_hour"] == 0
    instances = gcp_control.manager.store.instances(cid, live_only=False)
    assert sorted(i.vm_type for i in instances) == ["e2-standard-2", "n2-standard-4"]
    price = {"e2-standard-2": SCHEDULER, "n2-standard-4": WORKER}
    expected = sum(price[i.vm_type] * max(MINIMUM_BILLED_SECONDS, i.terminated_at - i.launched_at) / 3600
                   for i in instances)
    assert final["accrued"] == pytest.approx(expected, rel=1e-6)
