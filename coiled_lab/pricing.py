"""Prices and cost: the one place that knows what a cluster costs.

Every front door shows what this module returns: :func:`estimate` before launch, and
:func:`accrued` from the real launch and terminate times of each instance after it
(per-second billing with a 60 s minimum, as EC2 and Compute Engine bill Linux VMs).

Prices come from the cloud's price API (AWS: the Price List API for on-demand and EBS
prices, ``DescribeSpotPriceHistory`` for spot; GCP: the Cloud Billing Catalog API for
vCPU, RAM, GPU and disk rates, on-demand and Spot, see :mod:`coiled_lab.billing_catalog`),
cached in the store for a day. When that cannot be reached (no credentials, no network),
a bundled snapshot answers, and every estimate says so and from when. The local backend
costs nothing.
"""

from __future__ import annotations

import asyncio
import json
import time
import weakref
from contextlib import suppress
from pathlib import Path
from typing import Any, Callable, Iterable, Optional

from . import billing_catalog, config
from .spec import ClusterSpec, ClusterSpecError

CURRENCY = "USD"
MINIMUM_BILLED_SECONDS = 60
PRICE_TTL = 24 * 3600
HOURS_PER_MONTH = 730
PRICE_LIST_REGION = "us-east-1"  # where the Price List API answers
BILLING_CATALOG = "Cloud Billing Catalog API"
GCP_SNAPSHOT_REGION = "us-central1"  # what the snapshot prices a region it does not list as
CATALOG_RETRY = 300  # seconds the snapshot answers after the billing catalog could not be read
SNAPSHOT = Path(__file__).with_name("prices-snapshot.json")
NOTES = {
    "egress": "data leaving the cloud (egress) is billed by the GB and is not included",
    "cross-zone": "traffic between zones (allow_cross_zone) is billed by the GB and is not included",
    "spot": "spot prices change and spot workers can be interrupted",
}


def _snapshot() -> dict[str, Any]:
    return json.loads(SNAPSHOT.read_text())


class PriceBook:
    """On-demand and storage prices for a cloud, from its price API or the snapshot.

    ``aws`` is anything with ``async call(service, region, operation, **params)`` (the AWS
    backend's session); ``gcp`` is google-auth credentials (the GCP backend's); ``store``
    caches what the APIs said for :data:`PRICE_TTL`. Without a store nothing is cached.
    """

    def __init__(self, store: Any = None, aws: Any = None, gcp: Any = None):
        self.store = store
        self.aws = aws
        self.gcp = gcp
        # After a failed catalog read, the snapshot answers at once for a while (same credentials).
        self._gcp_failed: tuple[Any, float] = (None, 0.0)
        self._adopted: weakref.WeakSet = weakref.WeakSet()  # backends whose credentials were taken or missed

    async def adopt(self, cloud: str, backend: Any) -> None:
        """Ask ``cloud``'s price API with ``backend``'s credentials, unless the book has
        some: the estimate and the accrued cost then use the prices the cluster's own
        account sees. A backend without credentials is asked once."""
        if backend in self._adopted:
            return
        self._adopted.add(backend)
        if cloud == "gcp" and self.gcp is None:
            self.gcp = await asyncio.get_running_loop().run_in_executor(None, _credentials_of, backend)
        elif cloud == "aws" and self.aws is None:
            self.aws = getattr(backend, "aws", None)

    async def aws_on_demand(self, region: str, vm_type: str) -> dict[str, Any]:
        filters = {"instanceType": vm_type, "regionCode": region, "operatingSystem": "Linux", "tenancy": "Shared",
                   "preInstalledSw": "NA", "capacitystatus": "Used"}
        return await self._quote(f"aws:{region}:{vm_type}", filters, "Hrs",
                                 lambda snap: snap["on_demand"].get(vm_type), f"{vm_type} in {region}", region)

    async def aws_storage(self, region: str, volume: str = "gp3") -> dict[str, Any]:
        filters = {"productFamily": "Storage", "volumeApiName": volume, "regionCode": region}
        return await self._quote(f"aws:{region}:ebs:{volume}", filters, "GB-Mo",
                                 lambda snap: snap["ebs_gb_month"].get(volume), f"EBS {volume} in {region}", region)

    async def gcp_machine(self, region: str, machine: dict[str, Any], spot: bool,
                          field: str = "worker_vm_types") -> dict[str, Any]:
        """$/hour of a Compute Engine machine (``{"name", "vcpus", "memory_gib", "gpus",
        "gpu_type"}``), on-demand or Spot; a bad or unpriced type names ``field``."""
        table, source = await self._gcp_table(region)
        price = billing_catalog.machine_price(table, machine, spot, _where(region, source), field)
        return {**source, "price": price}

    async def gcp_machines(self, region: str, machines: Iterable[dict[str, Any]],
                           spot: bool) -> dict[str, Optional[float]]:
        """$/hour of each machine (shapes as for :meth:`gcp_machine`) by name, None for one
        whose rates are not published, from one read of the region's table: ordering the
        types that fit a size by price asks about many at once."""
        table, source = await self._gcp_table(region)
        out: dict[str, Optional[float]] = {}
        for machine in machines:
            try:
                out[machine["name"]] = billing_catalog.machine_price(table, machine, spot, _where(region, source))
            except ClusterSpecError:
                out[machine["name"]] = None
        return out

    async def gcp_disk(self, region: str, disk_type: str) -> dict[str, Any]:
        """$/GiB-month of a persistent disk type (``pd-standard``, ``pd-balanced``, ``pd-ssd``)."""
        table, source = await self._gcp_table(region)
        return {**source, "price": billing_catalog.disk_price(table, disk_type, _where(region, source))}

    async def _gcp_table(self, region: str) -> tuple[dict[str, Any], dict[str, Any]]:
        """The region's rate table and where it came from: the store's copy of the catalog
        if younger than :data:`PRICE_TTL`, else the whole catalog read again (every region's
        table cached from that one read), else the snapshot."""
        key = f"gcp:{region}"
        cached = self.store.cached_price(key, PRICE_TTL) if self.store is not None else None
        if cached:
            return cached["table"], {"source": BILLING_CATALOG, "as_of": cached["as_of"], "snapshot": False}
        failed_with, until = self._gcp_failed
        if self.gcp is None or (failed_with is self.gcp and time.monotonic() < until):
            return self._gcp_snapshot(region)
        try:
            tables, now = await asyncio.get_running_loop().run_in_executor(None, self._read_catalog)
        except Exception:  # noqa: BLE001 - no network, refused, throttled: use the snapshot
            # One estimate asks for several quotes: wait for one timeout, not one each.
            self._gcp_failed = (self.gcp, time.monotonic() + CATALOG_RETRY)
            return self._gcp_snapshot(region)
        if region not in tables:
            raise ClusterSpecError(f"region: Compute Engine publishes no prices for {region!r}; priced regions: "
                                   f"{', '.join(sorted(r for r in tables if r != 'global'))}", "region")
        return tables[region], {"source": BILLING_CATALOG, "as_of": now, "snapshot": False}

    def _read_catalog(self) -> tuple[dict[str, dict[str, Any]], float]:
        """All Compute Engine SKUs, page after page, as per-region tables, each cached in
        the store; and when they were read (blocking)."""
        from google.auth.transport.requests import AuthorizedSession

        endpoint = (config.get("gcp.endpoints.billing") or billing_catalog.GOOGLE_ENDPOINT).rstrip("/")
        url = f"{endpoint}/v1/services/{billing_catalog.COMPUTE_ENGINE}/skus"
        with AuthorizedSession(self.gcp) as session:
            def get_page(params: dict[str, str]) -> dict[str, Any]:
                reply = session.get(url, params=params, timeout=(10, 120))
                reply.raise_for_status()
                return reply.json()

            tables = billing_catalog.rate_tables(billing_catalog.skus(get_page))
        now = time.time()
        if self.store is not None:
            for name, table in tables.items():
                self.store.cache_price(f"gcp:{name}", {"table": table, "as_of": now})
        return tables, now

    @staticmethod
    def _gcp_snapshot(region: str) -> tuple[dict[str, Any], dict[str, Any]]:
        snap = _snapshot()["gcp"]
        regions = snap["regions"]
        where = "" if region in regions else f"; {region} is priced as {GCP_SNAPSHOT_REGION}"
        source = f"snapshot of {snap['as_of']} ({snap['source']}){where}"
        return regions.get(region) or regions[GCP_SNAPSHOT_REGION], {
            "source": source, "as_of": snap["as_of"], "snapshot": True}

    async def _quote(self, key: str, filters: dict[str, str], unit: str, from_snapshot: Callable[[dict], Any],
                     what: str, region: str) -> dict[str, Any]:
        if self.store is not None:
            cached = self.store.cached_price(key, PRICE_TTL)
            if cached:
                return cached
        try:
            price = await self._price_list(filters, unit)
        except Exception as exc:  # noqa: BLE001 - no credentials, no network, throttled: use the snapshot
            return self._from_snapshot(from_snapshot, what, region, reason=type(exc).__name__)
        if price is None:
            raise ClusterSpecError(f"worker_vm_types: AWS publishes no Linux on-demand price for {what}", "worker_vm_types")
        quote = {"price": price, "source": "AWS Price List API", "as_of": time.time(), "snapshot": False}
        if self.store is not None:
            self.store.cache_price(key, quote)
        return quote

    async def _price_list(self, filters: dict[str, str], unit: str) -> Optional[float]:
        if self.aws is None:
            raise LookupError("no AWS session")
        reply = await self.aws.call(
            "pricing", PRICE_LIST_REGION, "get_products", ServiceCode="AmazonEC2", FormatVersion="aws_v1",
            Filters=[{"Type": "TERM_MATCH", "Field": k, "Value": v} for k, v in filters.items()], MaxResults=100,
        )
        prices = []
        for item in reply.get("PriceList", []):
            product = json.loads(item) if isinstance(item, str) else item
            for term in product.get("terms", {}).get("OnDemand", {}).values():
                for dim in term.get("priceDimensions", {}).values():
                    usd = float(dim.get("pricePerUnit", {}).get("USD", 0) or 0)
                    if dim.get("unit") == unit and usd > 0:
                        prices.append(usd)
        return min(prices) if prices else None

    @staticmethod
    def _from_snapshot(pick: Callable[[dict], Any], what: str, region: str, reason: str) -> dict[str, Any]:
        snap = _snapshot()
        regions = snap["aws"]
        table = regions.get(region) or regions["us-east-1"]
        price = pick(table)
        if price is None:
            raise ClusterSpecError(
                f"worker_vm_types: no price is known for {what}: the AWS Price List API could not be reached "
                f"({reason}) and the bundled snapshot does not list it", "worker_vm_types")
        where = "" if region in regions else f"; {region} is priced as us-east-1"
        return {"price": price, "source": f"snapshot of {snap['as_of']} ({snap['source']}){where}",
                "as_of": snap["as_of"], "snapshot": True}


async def estimate(spec: ClusterSpec, backend: Any = None, book: Optional[PriceBook] = None) -> dict[str, Any]:
    """$/hour for a spec before launch: scheduler + n_workers x worker (+ storage).

    ``backend`` says which instance types the spec would get and what they cost on spot
    (:meth:`~coiled_lab.backends.base.Backend.price_inputs`); ``book`` has the prices.
    """
    if spec.backend == "local":
        return _estimate_json(spec, 0.0, 0.0, 0.0, 0.0, "local processes on this machine cost nothing", time.time(), [])
    if backend is None or book is None:
        raise ClusterSpecError(f"backend: {spec.backend!r} has no price source here", "backend")
    await book.adopt(spec.backend, backend)
    inputs = await backend.price_inputs(spec)
    quotes = await (_gcp_quotes if spec.backend == "gcp" else _aws_quotes)(spec, book, inputs)
    scheduler, worker, storage = quotes["scheduler"], quotes["worker"], quotes["storage"]
    storage_hour = storage["price"] * inputs.get("volume_gb", 0) * (spec.n_workers + 1) / HOURS_PER_MONTH
    worker_each = worker["price"]
    spot_savings = 0.0
    notes = [NOTES["egress"]]
    spot_price = quotes["spot_price"]
    if spec.spot_policy != "on-demand" and spot_price:
        spot_savings = max(0.0, worker_each - spot_price) * spec.n_workers
        worker_each = spot_price
        notes.append(NOTES["spot"])
    if spec.allow_cross_zone:
        notes.append(NOTES["cross-zone"])
    used = [scheduler, worker, storage]
    snapshot = next((q for q in used if q.get("snapshot")), None)
    if snapshot:
        source = snapshot["source"]
        notes.append(f"prices from a snapshot dated {snapshot['as_of']}, not today's")
    elif spec.backend == "gcp":
        source = BILLING_CATALOG
    else:
        source = "AWS Price List API" + (" and spot price history" if spot_savings else "")
    est = _estimate_json(spec, scheduler["price"], worker_each, storage_hour, spot_savings, source,
                         snapshot["as_of"] if snapshot else min(q["as_of"] for q in used), notes)
    est["worker_vm_type"], est["scheduler_vm_type"] = inputs["worker_type"], inputs["scheduler_type"]
    return est


def _where(region: str, source: dict[str, Any]) -> str:
    """A region and where its prices came from, for error messages."""
    return f"{region} (snapshot of {source['as_of']})" if source["snapshot"] else f"{region} ({source['source']})"


def _credentials_of(backend: Any) -> Any:
    """The GCP backend's credentials, None if it has none (blocking: finding application-
    default credentials may ask the metadata server)."""
    try:
        return backend.credentials
    except Exception:  # noqa: BLE001 - no credentials: the snapshot answers
        return None


async def _aws_quotes(spec: ClusterSpec, book: PriceBook, inputs: dict[str, Any]) -> dict[str, Any]:
    """On-demand quotes from the Price List API; the spot price is the backend's (spot history)."""
    region = inputs["region"]
    return {"scheduler": await book.aws_on_demand(region, inputs["scheduler_type"]),
            "worker": await book.aws_on_demand(region, inputs["worker_type"]),
            "storage": await book.aws_storage(region, inputs.get("volume_type", "gp3")),
            "spot_price": inputs.get("spot_price")}


async def _gcp_quotes(spec: ClusterSpec, book: PriceBook, inputs: dict[str, Any]) -> dict[str, Any]:
    """On-demand and Spot machine quotes and the disk's, all from the billing catalog."""
    region = inputs["region"]
    spot = None
    if spec.spot_policy != "on-demand":
        with suppress(ClusterSpecError):  # no Spot rate published: priced on-demand, no saving shown
            spot = (await book.gcp_machine(region, inputs["worker_machine"], spot=True))["price"]
    return {"scheduler": await book.gcp_machine(region, inputs["scheduler_machine"], spot=False,
                                                field="scheduler_vm_type"),
            "worker": await book.gcp_machine(region, inputs["worker_machine"], spot=False),
            "storage": await book.gcp_disk(region, inputs.get("volume_type") or "pd-balanced"),
            "spot_price": spot}


def _estimate_json(spec: ClusterSpec, scheduler: float, worker_each: float, storage: float, spot_savings: float,
                   source: str, as_of: Any, notes: list[str]) -> dict[str, Any]:
    workers = worker_each * spec.n_workers
    return {
        "backend": spec.backend,
        "per_hour": scheduler + workers + storage,
        "scheduler": scheduler,
        "workers": workers,
        "worker_each": worker_each,
        "n_workers": spec.n_workers,
        "storage": storage,
        "currency": CURRENCY,
        "spot_savings": spot_savings,
        "source": source,
        "as_of": as_of,
        "notes": notes,
    }


def accrued(
    instances: Iterable[Any], price_of: Callable[[Any], float], now: Optional[float] = None
) -> dict[str, float]:
    """Cost so far and current $/hour from instances' launch/terminate times."""
    now = time.time() if now is None else now
    total = per_hour = 0.0
    for inst in instances:
        price = price_of(inst)
        end = inst.terminated_at if inst.terminated_at is not None else now
        seconds = max(MINIMUM_BILLED_SECONDS, end - inst.launched_at)
        total += price * seconds / 3600
        if inst.terminated_at is None:
            per_hour += price
    return {"accrued": total, "per_hour": per_hour, "currency": CURRENCY, "as_of": now}


def extrapolate(cost: Optional[dict[str, Any]], now: Optional[float] = None) -> Optional[dict[str, Any]]:
    """A stored cost brought up to now at its $/hour (between two cost updates)."""
    if not cost:
        return None
    now = time.time() if now is None else now
    return {**cost, "accrued": cost["accrued"] + cost["per_hour"] * max(0.0, now - cost["as_of"]) / 3600, "as_of": now}
