"""Prices and cost: the one place that knows what a cluster costs.

Every front door shows what this module returns: :func:`estimate` before launch, and
:func:`accrued` from the real launch and terminate times of each instance after it
(per-second billing with a 60 s minimum, as EC2 and Compute Engine bill Linux VMs).

Prices come from the cloud's price API (AWS: the Price List API for on-demand and EBS
prices, ``DescribeSpotPriceHistory`` for spot; GCP: the Cloud Billing Catalog API for
vCPU, RAM, GPU and disk rates, on-demand and Spot, see :mod:`coiled_lab.billing_catalog`),
cached in the store for a day. When that cannot answer in time (no credentials, no
network, an endpoint that fails or hangs), the bundled snapshot (:mod:`.price_snapshot`)
answers, and every estimate says so and from when. The local backend costs nothing.
"""

from __future__ import annotations

import asyncio
import json
import time
import weakref
from contextlib import suppress
from typing import Any, Awaitable, Callable, Iterable, Iterator, Optional

from . import billing_catalog, config, deadline, price_snapshot
from .deadline import Deadline, DeadlinePassed
from .spec import ClusterSpec, ClusterSpecError

CURRENCY = "USD"
MINIMUM_BILLED_SECONDS = 60
PRICE_TTL = 24 * 3600
HOURS_PER_MONTH = 730
PRICE_LIST_REGION = "us-east-1"  # where the Price List API answers
# The Price List API's attributes of a Linux on-demand instance in shared tenancy, paid per hour used.
LINUX_ON_DEMAND = {"operatingSystem": "Linux", "tenancy": "Shared", "preInstalledSw": "NA", "capacitystatus": "Used"}
BILLING_CATALOG = "Cloud Billing Catalog API"
CATALOGS = {"aws": "EC2's instance catalog", "gcp": "Compute Engine's machine catalog"}
API_RETRY = 300  # seconds the snapshot answers at once after a price API failed (same credentials)
NOTES = {
    "egress": "data leaving the cloud (egress) is billed by the GB and is not included",
    "cross-zone": "traffic between zones (allow_cross_zone) is billed by the GB and is not included",
    "spot": "spot prices change and spot workers can be interrupted",
}


class PriceUnknown(ClusterSpecError):
    """Neither the cloud's price API (in time) nor the bundled snapshot knows a price."""


def timeout() -> float:
    """Seconds an answer that needs prices (an estimate, a cost update) waits for the clouds."""
    return float(config.get("pricing.timeout"))


def reason(exc: BaseException, api: str) -> str:
    """Why ``api`` gave no price, in a few words (for notes, notifications and errors)."""
    if isinstance(exc, DeadlinePassed):
        return str(exc)
    if "Credentials" in type(exc).__name__:  # botocore's NoCredentialsError, google-auth's DefaultCredentialsError
        return f"{api}: no credentials found"
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    text = text if len(text) <= 200 else text[:197] + "..."
    return f"{api} could not be used ({type(exc).__name__}{': ' + text if text else ''})"


def on_demand_prices(price_list: Iterable[Any], unit: str) -> Iterator[tuple[dict[str, Any], float]]:
    """Each product of a Price List API ``GetProducts`` answer (JSON text or parsed) with an
    on-demand price in ``unit`` (``Hrs``, ``GB-Mo``): its attributes and that price in USD."""
    for item in price_list:
        product = json.loads(item) if isinstance(item, str) else item
        for term in product.get("terms", {}).get("OnDemand", {}).values():
            for dim in term.get("priceDimensions", {}).values():
                usd = float(dim.get("pricePerUnit", {}).get("USD", 0) or 0)
                if dim.get("unit") == unit and usd > 0:
                    yield product.get("product", {}).get("attributes", {}), usd


class PriceBook:
    """On-demand and storage prices for a cloud, from its price API or the snapshot.

    ``aws`` is anything with ``async call(service, region, operation, **params)`` (the AWS
    backend's session); ``gcp`` is google-auth credentials (the GCP backend's); ``store``
    caches what the APIs said for :data:`PRICE_TTL`. Without a store nothing is cached.

    A look-up waits for the API until its :class:`~coiled_lab.deadline.Deadline` (by default
    :func:`timeout` seconds), then the snapshot answers; the request goes on and its answer,
    when it comes, is cached for the next look-up. While a request has gone unanswered for
    longer than that, and for :data:`API_RETRY` seconds after one failed (no credentials,
    refused, unreachable), the snapshot answers at once: a reconcile pass that updates a
    cost does not wait on a price API that hangs.
    """

    def __init__(self, store: Any = None, aws: Any = None, gcp: Any = None):
        self.store = store
        self.aws = aws
        self.gcp = gcp
        self._failed: dict[str, tuple[Any, float, str]] = {}  # cloud -> (credentials, until, why)
        # what is being asked -> (credentials, request, when it was sent)
        self._requests: dict[str, tuple[Any, asyncio.Future, float]] = {}
        self._adopted: weakref.WeakSet = weakref.WeakSet()  # backends whose credentials were taken or missed

    async def adopt(self, cloud: str, backend: Any, within: Optional[Deadline] = None) -> None:
        """Ask ``cloud``'s price API with ``backend``'s credentials, unless the book has
        some: the estimate and the accrued cost then use the prices the cluster's own
        account sees. A backend without credentials is asked once."""
        if backend in self._adopted:
            return
        self._adopted.add(backend)
        if cloud == "gcp" and self.gcp is None:
            with suppress(DeadlinePassed):  # finding ADC may ask a metadata server that is not there
                self.gcp = await (within or Deadline(timeout())).wait(
                    deadline.blocking(_credentials_of, backend), "looking for GCP credentials")
        elif cloud == "aws" and self.aws is None:
            self.aws = getattr(backend, "aws", None)

    # -- AWS ------------------------------------------------------------------------------
    async def aws_on_demand(self, region: str, vm_type: str, field: str = "worker_vm_types",
                            within: Optional[Deadline] = None) -> dict[str, Any]:
        """$/hour of a Linux on-demand instance; ``field`` is named when it is not known."""
        filters = {"instanceType": vm_type, "regionCode": region, **LINUX_ON_DEMAND}
        return await self._quote(f"aws:{region}:{vm_type}", filters, "Hrs", price_snapshot.aws_on_demand(region, vm_type),
                                 f"{vm_type} in {region}", region, field, within)

    async def aws_storage(self, region: str, volume: str = "gp3", within: Optional[Deadline] = None) -> dict[str, Any]:
        """$/GB-month of an EBS volume type."""
        filters = {"productFamily": "Storage", "volumeApiName": volume, "regionCode": region}
        return await self._quote(f"aws:{region}:ebs:{volume}", filters, "GB-Mo", price_snapshot.aws_ebs(region, volume),
                                 f"EBS {volume} in {region}", region, None, within)

    async def _quote(self, key: str, filters: dict[str, str], unit: str, snapshot: Optional[tuple[float, str]],
                     what: str, region: str, field: Optional[str], within: Optional[Deadline]) -> dict[str, Any]:
        if self.store is not None:
            cached = self.store.cached_price(key, PRICE_TTL)
            if cached:
                return cached
        api = "the AWS Price List API"
        why = self._unusable("aws", self.aws, "no AWS credentials", key, api)
        if why is None:
            try:
                return await (within or Deadline(timeout())).wait(
                    self._request("aws", key, self.aws, lambda: self._price_list(key, filters, unit, what, field), api),
                    api)
            except PriceUnknown:
                raise
            except Exception as exc:  # noqa: BLE001 - no credentials, denied, unreachable, slow: the snapshot answers
                why = reason(exc, api)
        if snapshot is None:
            where = (f"the bundled snapshot ({price_snapshot.label(price_snapshot.as_of('aws'))}) "
                     + ("does not list it" if region in price_snapshot.regions("aws") else f"has no prices for {region}"))
            raise PriceUnknown(f"{field + ': ' if field else ''}no price is known for {what}: {why}, and {where}",
                               field)
        return price_snapshot.quote(*snapshot, why)

    async def _price_list(self, key: str, filters: dict[str, str], unit: str, what: str,
                          field: Optional[str]) -> dict[str, Any]:
        """Ask the Price List API (in a daemon thread: the session's); cache the answer."""
        reply = await self.aws.call(
            "pricing", PRICE_LIST_REGION, "get_products", ServiceCode="AmazonEC2", FormatVersion="aws_v1",
            Filters=[{"Type": "TERM_MATCH", "Field": k, "Value": v} for k, v in filters.items()], MaxResults=100,
        )
        prices = [usd for _, usd in on_demand_prices(reply.get("PriceList", []), unit)]
        if not prices:
            raise PriceUnknown(f"{field + ': ' if field else ''}AWS publishes no Linux on-demand price for {what}",
                               field)
        quote = {"price": min(prices), "source": "AWS Price List API", "as_of": time.time(), "snapshot": False}
        if self.store is not None:
            self.store.cache_price(key, quote)
        return quote

    # -- GCP ------------------------------------------------------------------------------
    async def gcp_machine(self, region: str, machine: dict[str, Any], spot: bool, field: str = "worker_vm_types",
                          within: Optional[Deadline] = None) -> dict[str, Any]:
        """$/hour of a Compute Engine machine (``{"name", "vcpus", "memory_gib", "gpus",
        "gpu_type"}``), on-demand or Spot; a bad or unpriced type names ``field``."""
        table, source = await self._gcp_table(region, within)
        price = billing_catalog.machine_price(table, machine, spot, _where(region, source), field)
        return {**source, "price": price}

    async def gcp_machines(self, region: str, machines: Iterable[dict[str, Any]],
                           spot: bool) -> dict[str, Optional[float]]:
        """$/hour of each machine (shapes as for :meth:`gcp_machine`) by name, None for one
        whose rates are not published, from one read of the region's table: ordering the
        types that fit a size by price asks about many at once."""
        machines = list(machines)
        try:
            table, source = await self._gcp_table(region)
        except PriceUnknown:  # a region the snapshot lacks, offline: no order by price
            return {machine["name"]: None for machine in machines}
        out: dict[str, Optional[float]] = {}
        for machine in machines:
            try:
                out[machine["name"]] = billing_catalog.machine_price(table, machine, spot, _where(region, source))
            except ClusterSpecError:
                out[machine["name"]] = None
        return out

    async def gcp_disk(self, region: str, disk_type: str, within: Optional[Deadline] = None) -> dict[str, Any]:
        """$/GiB-month of a persistent disk type (``pd-standard``, ``pd-balanced``, ``pd-ssd``)."""
        table, source = await self._gcp_table(region, within)
        try:
            price = billing_catalog.disk_price(table, disk_type, _where(region, source))
        except ClusterSpecError as exc:
            raise PriceUnknown(str(exc), None) from None
        return {**source, "price": price}

    async def _gcp_table(self, region: str, within: Optional[Deadline] = None) -> tuple[dict[str, Any], dict[str, Any]]:
        """The region's rate table and where it came from: the store's copy of the catalog
        if younger than :data:`PRICE_TTL`, else the whole catalog read again (every region's
        table cached from that one read), else the snapshot."""
        key = f"gcp:{region}"
        cached = self.store.cached_price(key, PRICE_TTL) if self.store is not None else None
        if cached:
            return cached["table"], {"source": BILLING_CATALOG, "as_of": cached["as_of"], "snapshot": False}
        api = f"the {BILLING_CATALOG}"
        why = self._unusable("gcp", self.gcp, "no GCP credentials", "gcp:catalog", api)
        if why is None:
            try:
                tables, now = await (within or Deadline(timeout())).wait(self._request(
                    "gcp", "gcp:catalog", self.gcp, lambda: deadline.blocking(self._read_catalog, self.gcp), api), api)
            except Exception as exc:  # noqa: BLE001 - no network, refused, throttled, slow: the snapshot answers
                why = reason(exc, api)  # (a slow read goes on and fills the cache)
            else:
                if region not in tables:
                    raise ClusterSpecError(f"region: Compute Engine publishes no prices for {region!r}; priced "
                                           f"regions: {', '.join(sorted(r for r in tables if r != 'global'))}",
                                           "region")
                return tables[region], {"source": BILLING_CATALOG, "as_of": now, "snapshot": False}
        found = price_snapshot.gcp_table(region)
        if found is None:
            raise PriceUnknown(
                f"region: no Compute Engine prices are known for {region!r}: {why}, and the bundled snapshot "
                f"({price_snapshot.label(price_snapshot.as_of('gcp'))}) prices only "
                f"{', '.join(price_snapshot.regions('gcp'))}", "region")
        table, as_of = found
        return table, {k: v for k, v in price_snapshot.quote(0.0, as_of, why).items() if k != "price"}

    def _read_catalog(self, credentials: Any) -> tuple[dict[str, dict[str, Any]], float]:
        """Every region's rate table, each cached in the store; and when they were read (blocking)."""
        tables = billing_catalog.read(credentials, config.get("gcp.endpoints.billing"))
        now = time.time()
        if self.store is not None:
            for name, table in tables.items():
                self.store.cache_price(f"gcp:{name}", {"table": table, "as_of": now})
        return tables, now

    # -- what both clouds share -------------------------------------------------------------
    def _request(self, cloud: str, key: str, credentials: Any, make: Callable[[], Awaitable[Any]],
                 api: str) -> asyncio.Future:
        """The request for ``key`` under way with these credentials, or a new one: look-ups
        that time out while it runs (each quote of several estimates) do not ask again. Its
        failure, whenever it comes, makes ``cloud``'s API unused for :data:`API_RETRY` seconds."""
        running = self._requests.get(key)
        if running is None or running[0] is not credentials or running[1].done():
            request = asyncio.ensure_future(make())
            request.add_done_callback(lambda done: self._settled(cloud, credentials, api, done))
            running = self._requests[key] = (credentials, request, time.monotonic())
        return running[1]

    def _settled(self, cloud: str, credentials: Any, api: str, done: asyncio.Future) -> None:
        error = None if done.cancelled() else done.exception()
        if error is not None and not isinstance(error, PriceUnknown):  # (no such price: an answer, not a failure)
            # One estimate asks for several quotes: one failure each time, not one per quote.
            self._failed[cloud] = (credentials, time.monotonic() + API_RETRY, reason(error, api))

    def _unusable(self, cloud: str, credentials: Any, without: str, key: str, api: str) -> Optional[str]:
        """Why ``cloud``'s price API is not to be asked about ``key`` now, or None."""
        if credentials is None:
            return without
        failed_with, until, why = self._failed.get(cloud, (None, 0.0, ""))
        if failed_with is credentials and time.monotonic() < until:
            return why
        running = self._requests.get(key)
        if running and running[0] is credentials and not running[1].done() and \
                time.monotonic() - running[2] > timeout():
            return f"{api} has not answered for {time.monotonic() - running[2]:.0f} s"
        return None


async def estimate(spec: ClusterSpec, backend: Any = None, book: Optional[PriceBook] = None) -> dict[str, Any]:
    """$/hour for a spec before launch: scheduler + n_workers x worker (+ storage).

    ``backend`` says which instance types the spec would get and what they cost on spot
    (:meth:`~coiled_lab.backends.base.Backend.price_inputs`); ``book`` has the prices. It
    answers within :func:`timeout` seconds whatever the clouds do: what is not live by
    then comes from the snapshot (sizes from the backend's ``offline_inputs``), labelled.
    """
    if spec.backend == "local":
        return _estimate_json(spec, 0.0, 0.0, 0.0, 0.0, "local processes on this machine cost nothing", time.time(), [])
    if backend is None or book is None:
        raise ClusterSpecError(f"backend: {spec.backend!r} has no price source here", "backend")
    within = Deadline(timeout())
    await book.adopt(spec.backend, backend, within)
    inputs = await _inputs(spec, backend, within)
    quotes = await (_gcp_quotes if spec.backend == "gcp" else _aws_quotes)(spec, book, inputs, within)
    scheduler, worker, storage = quotes["scheduler"], quotes["worker"], quotes["storage"]
    notes = [NOTES["egress"], *quotes["notes"]]
    storage_hour = 0.0
    if storage is not None:
        storage_hour = storage["price"] * inputs["volume_gb"] * (spec.n_workers + 1) / HOURS_PER_MONTH
    worker_each = worker["price"]
    spot_savings = 0.0
    spot_price = quotes["spot_price"]
    if spec.spot_policy != "on-demand" and spot_price:
        spot_savings = max(0.0, worker_each - spot_price) * spec.n_workers
        worker_each = spot_price
        notes.append(NOTES["spot"])
    elif spec.spot_policy != "on-demand":
        notes.append("no spot price is known now: the workers are priced on demand")
    if spec.allow_cross_zone:
        notes.append(NOTES["cross-zone"])
    used = [q for q in (scheduler, worker, storage) if q is not None]
    offline = [q for q in used if q.get("snapshot")]
    if offline:
        as_of = min(q["as_of"] for q in offline)
        source = f"snapshot: {price_snapshot.label(as_of)}"
        why = [inputs["offline"]] if inputs.get("offline") else []
        for q in offline:
            why += [q["reason"]] if q["reason"] not in why else []
        notes.append(f"not live: {'; '.join(why)}")
    else:
        as_of = min(q["as_of"] for q in used)
        source = BILLING_CATALOG if spec.backend == "gcp" else \
            "AWS Price List API" + (" and spot price history" if spot_savings else "")
    est = _estimate_json(spec, scheduler["price"], worker_each, storage_hour, spot_savings, source, as_of, notes)
    est["worker_vm_type"], est["scheduler_vm_type"] = inputs["worker_type"], inputs["scheduler_type"]
    return est


async def catalog_view(live: Awaitable[dict[str, Any]], offline: Callable[[], Awaitable[dict[str, Any]]],
                       what: str) -> dict[str, Any]:
    """A backend's catalog (regions, types) for forms: the cloud's, if it answers within
    :func:`timeout` seconds (a slower answer is still cached for next time), else the
    snapshot's, saying so (``source``) and why (``offline``). Bad input is raised."""
    try:
        return await Deadline(timeout()).wait(live, what)
    except ClusterSpecError:
        raise
    except Exception as exc:  # noqa: BLE001 - no credentials, no network, slow: the snapshot's types
        view = await offline()
        as_of = price_snapshot.as_of(view["backend"])
        return {**view, "source": f"snapshot: {price_snapshot.label(as_of)}", "offline": reason(exc, what)}


async def _inputs(spec: ClusterSpec, backend: Any, within: Deadline) -> dict[str, Any]:
    """What the backend says the spec would get (asking its cloud); when the cloud cannot
    answer in time, what its snapshot says (``offline`` tells why)."""
    try:
        return await within.wait(backend.price_inputs(spec), CATALOGS[spec.backend])
    except ClusterSpecError:
        raise
    except Exception as exc:  # noqa: BLE001 - no credentials, no network, slow: sizes from the snapshot
        offline = getattr(backend, "offline_inputs", None)
        if offline is None:
            raise
        return {**(await offline(spec)), "offline": reason(exc, CATALOGS[spec.backend])}


def _where(region: str, source: dict[str, Any]) -> str:
    """A region and where its prices came from, for error messages."""
    return f"{region} ({source['source']})"


def _credentials_of(backend: Any) -> Any:
    """The GCP backend's credentials, None if it has none (blocking: finding application-
    default credentials may ask the metadata server)."""
    try:
        return backend.credentials
    except Exception:  # noqa: BLE001 - no credentials: the snapshot answers
        return None


async def _storage(quote: Callable[[], Awaitable[dict[str, Any]]], inputs: dict[str, Any],
                   notes: list[str]) -> Optional[dict[str, Any]]:
    """The disks' $/GB-month, or None (and a note) when their size or price is not known."""
    if inputs.get("volume_gb") is None:
        notes.append("the disks are not included: their size is known only from the cloud's image catalog")
        return None
    try:
        return await quote()
    except PriceUnknown as exc:
        notes.append(f"the disks are not included: {exc}")
        return None


async def _aws_quotes(spec: ClusterSpec, book: PriceBook, inputs: dict[str, Any], within: Deadline) -> dict[str, Any]:
    """On-demand quotes from the Price List API; the spot price is the backend's (spot history)."""
    region, notes = inputs["region"], []
    return {"scheduler": await book.aws_on_demand(region, inputs["scheduler_type"], "scheduler_vm_type", within),
            "worker": await book.aws_on_demand(region, inputs["worker_type"], "worker_vm_types", within),
            "storage": await _storage(lambda: book.aws_storage(region, inputs.get("volume_type") or "gp3", within),
                                      inputs, notes),
            "spot_price": inputs.get("spot_price"), "notes": notes}


async def _gcp_quotes(spec: ClusterSpec, book: PriceBook, inputs: dict[str, Any], within: Deadline) -> dict[str, Any]:
    """On-demand and Spot machine quotes and the disk's, all from the billing catalog."""
    region, notes = inputs["region"], []
    spot = None
    if spec.spot_policy != "on-demand":
        with suppress(ClusterSpecError):  # no Spot rate published: priced on-demand, no saving shown
            spot = (await book.gcp_machine(region, inputs["worker_machine"], spot=True, within=within))["price"]
    return {"scheduler": await book.gcp_machine(region, inputs["scheduler_machine"], spot=False,
                                                field="scheduler_vm_type", within=within),
            "worker": await book.gcp_machine(region, inputs["worker_machine"], spot=False, within=within),
            "storage": await _storage(lambda: book.gcp_disk(region, inputs.get("volume_type") or "pd-balanced", within),
                                      inputs, notes),
            "spot_price": spot, "notes": notes}


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


def unknown_cost(why: str, now: Optional[float] = None) -> dict[str, Any]:
    """A cost that cannot be worked out (a price is not known): ``accrued`` and ``per_hour``
    are None, ``unknown`` says why; front doors show "unknown"."""
    return {"accrued": None, "per_hour": None, "currency": CURRENCY, "as_of": time.time() if now is None else now,
            "unknown": why}


def extrapolate(cost: Optional[dict[str, Any]], now: Optional[float] = None) -> Optional[dict[str, Any]]:
    """A stored cost brought up to now at its $/hour (between two cost updates); an
    unknown cost stays unknown."""
    if not cost or cost.get("accrued") is None:
        return cost or None
    now = time.time() if now is None else now
    return {**cost, "accrued": cost["accrued"] + cost["per_hour"] * max(0.0, now - cost["as_of"]) / 3600, "as_of": now}
