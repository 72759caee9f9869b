"""GCP prices through google-auth's real AuthorizedSession against a local Cloud Billing
Catalog endpoint (tests/gcpbilling.py): machine prices from per-family vCPU and RAM rates,
Spot, GPUs, disks, the day-long cache of the whole catalog, the labelled snapshot, and
estimates checked by hand against the fake catalog's rates."""

from __future__ import annotations

import asyncio

import dask.config
import pytest

from coiled_lab import price_snapshot
from coiled_lab.control.store import Store
from coiled_lab.pricing import BILLING_CATALOG, HOURS_PER_MONTH, PriceBook, PriceUnknown, estimate
from coiled_lab.spec import ClusterSpecError, parse_spec

from . import gcpbilling
from .gcpbilling import BillingCatalog

N2_CORE, N2_RAM, N2_SPOT_CORE, N2_SPOT_RAM = 0.031611, 0.004237, 0.00765, 0.001025
E2_CORE, E2_RAM = 0.021811, 0.002923
PAGES = -(-len(gcpbilling.CATALOG) // gcpbilling.PAGE)  # one catalog read


def machine(name: str, vcpus: int, memory_gib: float, gpus: int = 0, gpu_type=None) -> dict:
    return {"name": name, "vcpus": vcpus, "memory_gib": memory_gib, "gpus": gpus, "gpu_type": gpu_type}


N2_4 = machine("n2-standard-4", 4, 16.0)
E2_2 = machine("e2-standard-2", 2, 8.0)


def token_credentials(token: str = gcpbilling.TOKEN):
    """What the GCP backend holds: google-auth credentials with a bearer token."""
    from google.oauth2.credentials import Credentials

    return Credentials(token=token)


class FakeGCPBackend:
    """What the GCP backend answers to ``price_inputs`` (its contract with pricing)."""

    name = "gcp"

    def __init__(self, credentials=None, worker: dict = N2_4):
        self.credentials = credentials
        self.worker = worker

    async def price_inputs(self, spec):
        return {"region": spec.region or "us-central1", "scheduler_type": "e2-standard-2",
                "worker_type": self.worker["name"], "scheduler_machine": E2_2, "worker_machine": self.worker,
                "spot_price": None, "volume_gb": 50, "volume_type": "pd-balanced"}


@pytest.fixture
def catalog():
    server = BillingCatalog()
    with dask.config.set({"coiled-lab.gcp.endpoints.billing": server.url}):
        yield server
    server.close()


def run(coro):
    return asyncio.run(coro)


def test_machine_prices_are_vcpus_and_memory_at_the_familys_rates(tmp_path, catalog):
    book = PriceBook(Store(tmp_path / "s.sqlite"), gcp=token_credentials())
    quote = run(book.gcp_machine("us-central1", N2_4, spot=False))
    assert quote["price"] == pytest.approx(4 * N2_CORE + 16 * N2_RAM)  # 0.194236, GCP's list price
    assert quote["source"] == BILLING_CATALOG and not quote["snapshot"]
    # The whole catalog was read once, page by page, with the credentials' bearer token.
    assert len(catalog.requests) == PAGES
    assert [r["params"].get("pageToken") for r in catalog.requests] == \
        [None, *(str(gcpbilling.PAGE * i) for i in range(1, PAGES))]
    assert {r["authorization"] for r in catalog.requests} == {f"Bearer {gcpbilling.TOKEN}"}
    assert {r["params"]["currencyCode"] for r in catalog.requests} == {"USD"}

    spot = run(book.gcp_machine("us-central1", N2_4, spot=True))["price"]
    assert spot == pytest.approx(4 * N2_SPOT_CORE + 16 * N2_SPOT_RAM) and spot < quote["price"]
    gpu = machine("n1-standard-4", 4, 15.0, gpus=1, gpu_type="nvidia-tesla-t4")
    assert run(book.gcp_machine("us-central1", gpu, spot=False))["price"] == \
        pytest.approx(4 * 0.031611 + 15 * 0.004237 + 0.35)
    assert run(book.gcp_machine("us-east1", {**gpu, "gpus": 2}, spot=False))["price"] == \
        pytest.approx(4 * 0.031611 + 15 * 0.004237 + 2 * 0.35)
    # Shared core: e2-medium bills one E2 vCPU of its two; f1-micro has a rate of its own.
    assert run(book.gcp_machine("us-central1", machine("e2-medium", 2, 4.0), spot=False))["price"] == \
        pytest.approx(E2_CORE + 4 * E2_RAM)
    assert run(book.gcp_machine("us-central1", machine("f1-micro", 1, 0.6), spot=False))["price"] == 0.0076
    c3, c2 = machine("c3-standard-4", 4, 16.0), machine("c2-standard-4", 4, 16.0)  # C2 SKUs say "Compute optimized"
    assert run(book.gcp_machine("us-central1", c3, spot=False))["price"] == pytest.approx(4 * 0.03398 + 16 * 0.00455)
    assert run(book.gcp_machine("us-central1", c2, spot=False))["price"] == pytest.approx(4 * 0.03398 + 16 * 0.00455)
    assert run(book.gcp_machine("europe-west1", N2_4, spot=False))["price"] == \
        pytest.approx(4 * 0.034773 + 16 * 0.004661)
    # Disks: the zonal list price, not the regional disk's, past a zero first tier.
    assert run(book.gcp_disk("us-central1", "pd-balanced"))["price"] == 0.10
    assert run(book.gcp_disk("us-central1", "pd-standard"))["price"] == 0.04
    assert run(book.gcp_disk("us-central1", "pd-ssd"))["price"] == 0.17
    assert run(book.gcp_disk("europe-west1", "pd-balanced"))["price"] == 0.11
    assert len(catalog.requests) == PAGES  # every region's table came from the store's cache


def test_the_cache_lives_in_the_store_for_a_day(tmp_path, catalog, monkeypatch):
    import coiled_lab.pricing as pricing

    run(PriceBook(Store(tmp_path / "s.sqlite"), gcp=token_credentials()).gcp_machine("us-central1", N2_4, False))
    assert len(catalog.requests) == PAGES
    again = PriceBook(Store(tmp_path / "s.sqlite"), gcp=token_credentials())  # a new server process, same store
    assert run(again.gcp_disk("us-east1", "pd-ssd"))["price"] == 0.17
    assert len(catalog.requests) == PAGES
    monkeypatch.setattr(pricing, "PRICE_TTL", -1)
    assert not run(again.gcp_machine("us-central1", N2_4, False))["snapshot"]
    assert len(catalog.requests) == 2 * PAGES  # expired: the catalog is read again


def test_without_credentials_or_network_the_dated_snapshot_answers(tmp_path, catalog):
    no_credentials = PriceBook(Store(tmp_path / "s.sqlite"))
    quote = run(no_credentials.gcp_machine("us-central1", N2_4, spot=False))
    table, as_of = price_snapshot.gcp_table("us-central1")
    assert quote["snapshot"] and quote["as_of"] == as_of and quote["source"] == f"snapshot: prices as of {as_of}, not live"
    assert quote["price"] == pytest.approx(4 * table["cores"]["n2"]["on-demand"] + 16 * table["ram"]["n2"]["on-demand"])
    assert quote["reason"] == "no GCP credentials"
    assert catalog.requests == []  # nothing asked without credentials

    refused = PriceBook(Store(tmp_path / "refused.sqlite"), gcp=token_credentials("revoked-token"))
    assert run(refused.gcp_disk("us-central1", "pd-ssd"))["snapshot"]
    assert catalog.requests[-1]["authorization"] == "Bearer revoked-token"  # asked, got 401
    asked = len(catalog.requests)
    assert run(refused.gcp_machine("us-central1", N2_4, spot=True))["snapshot"]
    assert len(catalog.requests) == asked  # not asked again at once: one failure per estimate, not one per quote
    refused.gcp = token_credentials()  # new credentials are tried at once
    assert not run(refused.gcp_machine("us-central1", N2_4, spot=True))["snapshot"]

    with dask.config.set({"coiled-lab.gcp.endpoints.billing": "http://127.0.0.1:9"}):  # nothing listens there
        offline = PriceBook(Store(tmp_path / "s.sqlite"), gcp=token_credentials())
        # Each region at its own rates (Mumbai's are not Iowa's), never another region's.
        elsewhere = run(offline.gcp_machine("asia-south1", N2_4, spot=True))
        mumbai, _ = price_snapshot.gcp_table("asia-south1")
        assert elsewhere["snapshot"] and elsewhere["price"] == pytest.approx(
            4 * mumbai["cores"]["n2"]["spot"] + 16 * mumbai["ram"]["n2"]["spot"])
        assert mumbai["cores"]["n2"] != table["cores"]["n2"]
        with pytest.raises(PriceUnknown, match="region: no Compute Engine prices are known for 'me-west1'"):
            run(offline.gcp_machine("me-west1", N2_4, spot=False))
        spec = parse_spec(backend="gcp", n_workers=2, region="us-central1", worker_vm_types=["n2-standard-4"])
        est = run(estimate(spec, FakeGCPBackend(token_credentials()), offline))
    assert est["as_of"] == as_of and est["source"] == f"snapshot: prices as of {as_of}, not live"
    assert any(n.startswith("not live: the Cloud Billing Catalog API could not be used") for n in est["notes"])
    assert est["workers"] == pytest.approx(2 * quote["price"])


def test_estimate_is_scheduler_plus_workers_plus_disks_and_spot_saves(tmp_path, catalog):
    book = PriceBook(Store(tmp_path / "s.sqlite"))
    backend = FakeGCPBackend(token_credentials())
    spec = parse_spec(backend="gcp", n_workers=10, region="us-central1", worker_vm_types=["n2-standard-4"])
    est = run(estimate(spec, backend, book))
    assert book.gcp is backend.credentials  # the backend's credentials read the catalog
    scheduler, worker = 2 * E2_CORE + 8 * E2_RAM, 4 * N2_CORE + 16 * N2_RAM
    storage = 0.10 * 50 * 11 / HOURS_PER_MONTH
    assert est["scheduler"] == pytest.approx(scheduler) and est["worker_each"] == pytest.approx(worker)
    assert est["storage"] == pytest.approx(storage)
    assert est["per_hour"] == pytest.approx(scheduler + 10 * worker + storage)
    assert est["source"] == BILLING_CATALOG and est["spot_savings"] == 0 and est["backend"] == "gcp"
    assert (est["worker_vm_type"], est["scheduler_vm_type"]) == ("n2-standard-4", "e2-standard-2")

    spot = parse_spec(backend="gcp", n_workers=10, region="us-central1", worker_vm_types=["n2-standard-4"],
                      spot_policy="spot_with_fallback", allow_cross_zone=True)
    est = run(estimate(spot, backend, book))
    spot_each = 4 * N2_SPOT_CORE + 16 * N2_SPOT_RAM
    assert est["worker_each"] == pytest.approx(spot_each)
    assert est["spot_savings"] == pytest.approx(10 * (worker - spot_each))
    assert est["per_hour"] == pytest.approx(scheduler + 10 * spot_each + storage)
    assert any("spot" in n for n in est["notes"]) and any("zones" in n for n in est["notes"])
    assert len(catalog.requests) == PAGES  # both estimates: one catalog read

    gpus = FakeGCPBackend(token_credentials(), machine("n1-standard-8", 8, 30.0, gpus=2, gpu_type="nvidia-tesla-t4"))
    est = run(estimate(parse_spec(backend="gcp", n_workers=3, region="us-central1"), gpus, book))
    assert est["worker_each"] == pytest.approx(8 * 0.031611 + 30 * 0.004237 + 2 * 0.35)
    # The fake catalog has no Spot N1 rate: a Spot estimate shows the on-demand price and no saving.
    est = run(estimate(parse_spec(backend="gcp", n_workers=3, region="us-central1", spot_policy="spot"), gpus, book))
    assert est["worker_each"] == pytest.approx(8 * 0.031611 + 30 * 0.004237 + 2 * 0.35) and est["spot_savings"] == 0


def test_what_has_no_price_is_a_clear_error(tmp_path, catalog):
    book = PriceBook(Store(tmp_path / "s.sqlite"), gcp=token_credentials())
    with pytest.raises(ClusterSpecError, match="z9-standard-4") as err:
        run(book.gcp_machine("us-central1", machine("z9-standard-4", 4, 16.0), spot=False))
    assert err.value.field == "worker_vm_types" and "c2, c3, e2, n1, n2" in err.value.message  # the priced families
    with pytest.raises(ClusterSpecError, match="GPU nvidia-h200 .* GPU types priced there: nvidia-tesla-t4"):
        run(book.gcp_machine("us-central1", machine("n1-standard-4", 4, 15.0, 1, "nvidia-h200"), spot=False))
    with pytest.raises(ClusterSpecError, match="no spot price is published for the N1 vCPUs of 'n1-standard-4'"):
        run(book.gcp_machine("us-central1", machine("n1-standard-4", 4, 15.0), spot=True))  # no Spot N1 SKU here
    with pytest.raises(ClusterSpecError) as err:
        run(book.gcp_machine("mars-north1", N2_4, spot=False))
    assert err.value.field == "region" and "us-central1" in err.value.message
    with pytest.raises(ClusterSpecError, match="pd-extreme"):
        run(book.gcp_disk("us-central1", "pd-extreme"))

    class OddScheduler(FakeGCPBackend):
        async def price_inputs(self, spec):
            return {**await super().price_inputs(spec), "scheduler_machine": machine("x1-tiny", 1, 1.0)}

    with pytest.raises(ClusterSpecError) as err:
        run(estimate(parse_spec(backend="gcp", n_workers=1, region="us-central1"), OddScheduler(), book))
    assert err.value.field == "scheduler_vm_type"


def test_the_manager_estimates_and_limits_gcp_clusters(tmp_path, catalog):
    """POST /estimate and the max-cost-per-hour limit go through ClusterManager._estimate."""
    from coiled_lab.control.limits import LimitExceeded
    from coiled_lab.control.manager import ClusterManager

    spec = {"backend": "gcp", "n_workers": 4, "region": "us-central1", "worker_vm_types": ["n2-standard-4"]}

    async def scenario():
        async with ClusterManager(tmp_path / "state", backends={"gcp": FakeGCPBackend(token_credentials())}) as m:
            est = await m.estimate(spec)
            with dask.config.set({"coiled-lab.limits": {"max-cost-per-hour": 0.5}}):
                with pytest.raises(LimitExceeded, match=r"\$0\.88/hour") as err:
                    await m.create(spec)
            m.credentials_changed("gcp")
            return est, err.value, m.store.list_clusters(), m.prices.gcp

    est, refused, recorded, credentials_after = run(scenario())
    assert est["source"] == BILLING_CATALOG and est["n_workers"] == 4
    assert est["per_hour"] == pytest.approx(2 * E2_CORE + 8 * E2_RAM + 4 * (4 * N2_CORE + 16 * N2_RAM)
                                            + 0.10 * 50 * 5 / HOURS_PER_MONTH)
    assert refused.limit == "max-cost-per-hour" and recorded == []
    assert len(catalog.requests) == PAGES  # the refusal was priced from the cache
    assert credentials_after is None  # new credentials: the next catalog read uses them


def test_the_book_takes_a_backends_credentials_once(tmp_path, catalog):
    """What the estimate and the accrued cost (ClusterManager._update_cost) both do first."""

    class NoCredentials:
        asked = 0

        @property
        def credentials(self):  # as the GCP backend does when ADC finds none
            import google.auth.exceptions

            NoCredentials.asked += 1
            raise google.auth.exceptions.DefaultCredentialsError("none")

    book = PriceBook(Store(tmp_path / "s.sqlite"))
    without = NoCredentials()
    run(book.adopt("gcp", without))
    run(book.adopt("gcp", without))
    assert book.gcp is None and NoCredentials.asked == 1  # looked for once, then the snapshot answers
    assert run(book.gcp_machine("us-central1", N2_4, spot=False))["snapshot"] and catalog.requests == []
    backend = FakeGCPBackend(token_credentials())  # e.g. made again after new credentials were stored
    run(book.adopt("gcp", backend))
    assert book.gcp is backend.credentials
    assert not run(book.gcp_machine("us-central1", N2_4, spot=False))["snapshot"]


# Default machine types the snapshot's sources have no rates for in a region.
SOURCE_GAPS = {("asia-northeast2", "n2d-standard-4"), ("asia-northeast3", "n2d-standard-4"),
               ("europe-west6", "n2-standard-4"), ("europe-west6", "n2d-standard-4")}


def test_the_snapshot_prices_the_default_types_in_each_region_it_covers():
    """Every region of the snapshot prices the default scheduler and worker types (but the
    gaps of its sources, listed so that a new one fails), from sizes it holds too."""
    defaults = [dask.config.get("coiled-lab.gcp.scheduler-vm-type"), *dask.config.get("coiled-lab.gcp.worker-vm-types")]
    sizes = price_snapshot.gcp_types()
    book = PriceBook()  # no credentials: the snapshot's rates
    missing = set()
    for region in price_snapshot.regions("gcp"):
        machines = [machine(n, sizes[n]["vcpus"], sizes[n]["memory_mib"] / 1024) for n in defaults]
        priced = run(book.gcp_machines(region, machines, spot=False))
        missing |= {(region, name) for name, price in priced.items() if price is None}
    assert missing == SOURCE_GAPS
    assert dask.config.get("coiled-lab.gcp.region") in price_snapshot.regions("gcp")
