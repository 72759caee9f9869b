"""Which machine types GCP workers get: the types that fit a size, smallest first and the
cheapest of a size first, priced from the Cloud Billing Catalog (mounted on the fake, its
prices chosen here so that price and family order disagree) through the manager's price
book; and a machine type out of stock in every allowed zone makes the workers of a real
cluster on the GCE emulator come up on the next type, the user told why."""

from __future__ import annotations

import re

import dask.config
import pytest

from coiled_lab.backends.gcp.catalog import MachineType, matching
from coiled_lab.spec import ClusterSpecError, parse_spec

from ..gcpbilling import AMERICAS, SKUS_PATH, sku_json, skus_page
from .conftest import REGION, labelled
from .test_faults import notifications, stop

LIST_SKUS = "cloudbilling.services.skus.list"
GiB = 2**30
# Rates where N2D is the cheapest on demand and E2 the dearest, E2 the cheapest Spot and
# N2D without a Spot rate: the opposite of the families' usual order.
RATES = [("N2D AMD Instance Core", "OnDemand", 0.020), ("N2D AMD Instance Ram", "OnDemand", 0.002),
         ("N2 Instance Core", "OnDemand", 0.025), ("N2 Instance Ram", "OnDemand", 0.003),
         ("E2 Instance Core", "OnDemand", 0.030), ("E2 Instance Ram", "OnDemand", 0.004),
         ("Spot Preemptible E2 Instance Core", "Preemptible", 0.005),
         ("Spot Preemptible E2 Instance Ram", "Preemptible", 0.0005),
         ("Spot Preemptible N2 Instance Core", "Preemptible", 0.008),
         ("Spot Preemptible N2 Instance Ram", "Preemptible", 0.001)]
CATALOG = [sku_json(i, f"{name} running in Americas", "Compute", "CPU" if "Core" in name else "RAM", usage,
                    "h" if "Core" in name else "GiBy.h", AMERICAS, usd) for i, (name, usage, usd) in enumerate(RATES)]
CATALOG.append(sku_json(len(RATES), "Balanced PD Capacity", "Storage", "SSD", "OnDemand", "GiBy.mo", AMERICAS, 0.10))
PAGES = -(-len(CATALOG) // 4)  # skus_page serves 4 SKUs a page


def test_matching_is_smallest_then_cheapest_and_never_pays_for_what_dask_cannot_use():
    types = [MachineType("e2-medium", 2, 4096, shared_cpu=True), MachineType("e2-standard-4", 4, 16384),
             MachineType("n2-standard-4", 4, 16384), MachineType("n1-standard-4", 4, 15360),
             MachineType("g2-standard-4", 4, 16384, gpus=1, gpu_type="nvidia-l4"),
             MachineType("n2-standard-8", 8, 32768)]
    prices = {"n2-standard-4": 0.10, "e2-standard-4": 0.13}
    assert [t.name for t in matching(types, 4, 16 * GiB, None, "nvidia-tesla-t4", prices)] == \
        ["n2-standard-4", "e2-standard-4", "n2-standard-8"]
    assert [t.name for t in matching(types, None, None, None, "nvidia-tesla-t4")] == \
        ["n1-standard-4", "e2-standard-4", "n2-standard-4", "n2-standard-8"]  # no shared core, no GPU
    gpus = matching(types, None, None, 1, "nvidia-tesla-t4", {"g2-standard-4": 0.7})
    # N1 counts with a T4 attached, and is smaller (15 GiB) than g2-standard-4 with its built-in L4.
    assert [(t.name, t.gpus, t.gpu_type, t.attached) for t in gpus] == [
        ("n1-standard-4", 1, "nvidia-tesla-t4", True), ("g2-standard-4", 1, "nvidia-l4", False)]
    assert matching(types, 64, None, None, "nvidia-tesla-t4") == []


@pytest.fixture
def catalog(fake):
    """This module's billing catalog on the fake (its tokens), for one test."""
    fake.route("GET", re.escape(SKUS_PATH), lambda request: skus_page(request.query, CATALOG), LIST_SKUS)
    with dask.config.set({"coiled-lab.gcp.endpoints.billing": fake.url}):
        yield fake


def test_sizes_pick_the_cheapest_types_of_the_smallest_size_from_the_billing_catalog(gcp_control, catalog):
    before = catalog.count(LIST_SKUS)
    sized = {"backend": "gcp", "worker_cpu": 4, "worker_memory": "16 GiB"}
    # The estimate, as every front door shows it, quotes the cheapest fit.
    est = gcp_control.run(gcp_control.estimate(sized))
    assert est["worker_vm_type"] == "n2d-standard-4" and est["worker_each"] == pytest.approx(4 * 0.020 + 16 * 0.002)
    assert catalog.count(LIST_SKUS) - before == PAGES  # one catalog read, with the backend's credentials

    backend = gcp_control.manager.backend("gcp")

    def workers(spec: dict) -> list[str]:
        _, types = gcp_control.run(backend.types.choose(parse_spec(spec), REGION))
        return [t.name for t in types]

    # 4 vCPUs and 16 GiB, cheapest first; then n1-standard-8 (30 GiB), smaller than the 32 GiB ones.
    assert workers(sized) == ["n2d-standard-4", "n2-standard-4", "e2-standard-4", "n1-standard-8", "n2-standard-8"]
    # Spot workers are ordered by Spot rates; N2D publishes none, so it comes after its size's priced types.
    assert workers({**sized, "spot_policy": "spot"}) == \
        ["e2-standard-4", "n2-standard-4", "n2d-standard-4", "n1-standard-8", "e2-standard-8"]
    named = ["e2-standard-4", "n2-standard-4"]
    assert workers({"backend": "gcp", "worker_vm_types": named}) == named  # named types: the order given
    assert catalog.count(LIST_SKUS) - before == PAGES  # the rest came from the store's cache

    # Refused as on AWS, naming the field.
    with pytest.raises(ClusterSpecError) as info:
        workers({"backend": "gcp", "worker_vm_types": ["e2-standard-4", "g2-standard-4"]})
    assert info.value.field == "worker_vm_types" and "mixes cpu and gpu machines" in str(info.value)
    with pytest.raises(ClusterSpecError) as info:
        workers({"backend": "gcp", "worker_cpu": 64})
    assert info.value.field == "worker_cpu" and "no machine type in us-central1 has 64 vCPUs" in str(info.value)


@pytest.mark.slow
def test_a_machine_type_out_of_stock_everywhere_falls_back_to_the_next_type(gcp_control, emulator, fake):
    fake.exhaust("e2-standard-4")  # the first of coiled-lab.gcp.worker-vm-types, in every zone
    cluster = gcp_control.run(gcp_control.create({"backend": "gcp", "n_workers": 2, "allow_cross_zone": True}))
    spot = gcp_control.run(gcp_control.create({"backend": "gcp", "n_workers": 1, "spot_policy": "spot_with_fallback"}))
    assert gcp_control.run(gcp_control.wait(cluster["id"], timeout=120))["status"] == "running"
    workers = labelled(fake, cluster["id"], "worker")
    assert len(workers) == 2 and {w["machineType"].rsplit("/", 1)[-1] for w in workers} == {"n2-standard-4"}
    assert sorted(i.vm_type for i in gcp_control.manager.store.instances(cluster["id"]) if i.role == "worker") == \
        ["n2-standard-4", "n2-standard-4"]
    told = [m for m in notifications(gcp_control, cluster["id"]) if "e2-standard-4" in m]
    assert told == ["no capacity for e2-standard-4 in us-central1-a, us-central1-b, us-central1-c "
                    "(ZONE_RESOURCE_POOL_EXHAUSTED_WITH_DETAILS); 2 workers run on n2-standard-4 instead"]
    # Two bulkInserts in all, one per type, each followed by one wait.
    asked = [c.body for c in fake.calls("compute.regionInstances.bulkInsert")
             if c.body["instanceProperties"]["labels"]["coiled-lab-cluster"] == cluster["id"]]
    assert [b["instanceProperties"]["machineType"] for b in asked] == ["e2-standard-4", "n2-standard-4"]
    assert [int(b["count"]) for b in asked] == [2, 2]

    # Spot, then on demand, of the first type; then Spot of the next, which has some: no
    # word of on-demand workers, which there are none of.
    assert gcp_control.run(gcp_control.wait(spot["id"], timeout=120))["status"] == "running"
    asked = [c.body["instanceProperties"] for c in fake.calls("compute.regionInstances.bulkInsert")
             if c.body["instanceProperties"]["labels"]["coiled-lab-cluster"] == spot["id"]]
    assert [(p["machineType"], p["scheduling"]["provisioningModel"]) for p in asked] == \
        [("e2-standard-4", "SPOT"), ("e2-standard-4", "STANDARD"), ("n2-standard-4", "SPOT")]
    (worker,) = labelled(fake, spot["id"], "worker")
    assert worker["scheduling"]["provisioningModel"] == "SPOT"
    told = notifications(gcp_control, spot["id"])
    assert not [m for m in told if "on demand" in m] and \
        [m for m in told if m.startswith("no capacity for e2-standard-4 in us-central1-a (")]
    for done in (cluster, spot):
        stop(gcp_control, done["id"], fake)
