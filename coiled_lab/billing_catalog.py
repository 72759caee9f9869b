"""Compute Engine's prices from the Cloud Billing Catalog API, as per-region rate tables.

Compute Engine bills a VM as the sum of its parts: vCPU-hours and GiB-of-RAM-hours at its
machine family's rates in its region (E2, N2, N2D, C2, C3, N1, ...), plus GPU-hours by
accelerator type, all on-demand or Spot (the catalog's ``usageType`` ``Preemptible``);
persistent disks by the GiB-month by disk type. The catalog lists these as SKUs of the
Compute Engine service, each with a description (``"N2 Instance Core running in
Americas"``), a category, the regions it applies to and a unit price.

:func:`rate_tables` turns the whole catalog into one small table per region, the shape
the store caches and the bundled snapshot's ``gcp`` section uses:

``{"cores": {family: {"on-demand": $/vCPU-h, "spot": ...}}, "ram": {family: {...: $/GiB-h}},
"gpus": {accelerator: {...: $/GPU-h}}, "fixed": {machine type: {...: $/h}},
"disks": {disk type: $/GiB-month}}``

:func:`machine_price` and :func:`disk_price` price from such a table, live or snapshot.
"""

from __future__ import annotations

import re
from typing import Any, Callable, Iterable, Iterator, Optional

from .spec import ClusterSpecError

COMPUTE_ENGINE = "6F81-5844-456A"  # the Cloud Billing Catalog's id of the Compute Engine service
GOOGLE_ENDPOINT = "https://cloudbilling.googleapis.com"
PAGE_SIZE = 5000
PROVISIONING = {"OnDemand": "on-demand", "Preemptible": "spot"}

# A core or RAM SKU names its machine family first ("N2D AMD Instance Core running in
# EMEA", "C3 Instance Ram running in Americas"), once "Spot Preemptible " is removed; a few
# families go by other names. Variants (custom, extended memory, sole tenancy, premiums,
# durations in brackets) are priced differently and left out.
_PART = re.compile(r"^(?P<family>.+?) (?P<part>Core|Ram) running in [^()]+$")
_FAMILY = re.compile(r"^(?P<family>[A-Z]\d+[A-Z]?)\b")
FAMILY_ALIASES = {"Compute optimized": "c2", "Memory-optimized Instance": "m1"}
_GPU = re.compile(r"^Nvidia (?P<tesla>Tesla )?(?P<model>[A-Za-z0-9]+)(?: (?P<memory>\d+GB))? GPU "
                  r"(?:running|attached to Spot Preemptible VMs running) in [^()]+$")
# Shared-core machine types have SKUs of their own; E2's bill a share of an E2 vCPU.
_FIXED = {"Micro Instance with burstable CPU": "f1-micro", "Small Instance with 1 VCPU": "g1-small"}
E2_SHARED_CORE = {"e2-micro": 0.25, "e2-small": 0.5, "e2-medium": 1.0}
_VARIANTS = ("Custom", "Sole Tenancy", "Extended", "Premium", "Regional")
_KINDS = {"cores": "machine families", "ram": "machine families", "gpus": "GPU types",
          "fixed": "shared-core machine types"}
_DISKS = {"Storage PD Capacity": "pd-standard", "Balanced PD Capacity": "pd-balanced",
          "SSD backed PD Capacity": "pd-ssd"}


def skus(get_page: Callable[[dict[str, str]], dict[str, Any]]) -> Iterator[dict[str, Any]]:
    """Every SKU of the catalog, following ``nextPageToken``; ``get_page(params)`` is one
    ``GET .../skus`` answered as JSON."""
    params = {"currencyCode": "USD", "pageSize": str(PAGE_SIZE)}
    while True:
        page = get_page(params)
        yield from page.get("skus", [])
        token = page.get("nextPageToken")
        if not token:
            return
        params = {**params, "pageToken": token}


def read(credentials: Any, endpoint: Optional[str] = None) -> dict[str, dict[str, Any]]:
    """Every region's rate table (:func:`rate_tables`) from the whole catalog, read page
    after page with these google-auth credentials (blocking); ``endpoint``: Google's if None."""
    from google.auth.transport.requests import AuthorizedSession

    url = f"{(endpoint or GOOGLE_ENDPOINT).rstrip('/')}/v1/services/{COMPUTE_ENGINE}/skus"
    with AuthorizedSession(credentials) as session:
        def get_page(params: dict[str, str]) -> dict[str, Any]:
            reply = session.get(url, params=params, timeout=(10, 120))
            reply.raise_for_status()
            return reply.json()

        return rate_tables(skus(get_page))


def _unit_price(sku: dict[str, Any]) -> Optional[float]:
    """The SKU's current USD rate: the first non-zero tier (a zero first tier is a free tier)."""
    infos = sku.get("pricingInfo") or []
    if not infos:
        return None
    for tier in infos[-1].get("pricingExpression", {}).get("tieredRates", []):
        money = tier.get("unitPrice", {})
        price = int(money.get("units") or 0) + int(money.get("nanos") or 0) / 1e9
        if price > 0:
            return price
    return None


def _gpu_name(match: re.Match) -> str:
    """Compute Engine's accelerator type for a GPU SKU: ``nvidia-tesla-t4``, ``nvidia-l4``,
    ``nvidia-a100-80gb``."""
    parts = ["nvidia", "tesla" if match["tesla"] else None, match["model"].lower(),
             match["memory"].lower() if match["memory"] else None]
    return "-".join(p for p in parts if p)


def _classify(sku: dict[str, Any]) -> Optional[tuple[str, str, Optional[str]]]:
    """``(table, key, provisioning)`` for a SKU that prices a VM part or a disk, else None."""
    category = sku.get("category", {})
    provisioning = PROVISIONING.get(category.get("usageType", ""))
    description = sku.get("description", "")
    if provisioning is None or any(w in description for w in _VARIANTS):
        return None
    if category.get("resourceFamily") == "Storage":
        name = description.split(" in ")[0]
        return ("disks", _DISKS[name], None) if name in _DISKS and provisioning == "on-demand" else None
    if category.get("resourceFamily") != "Compute":
        return None
    plain = re.sub(r"^(Spot )?Preemptible ", "", description)
    if match := _GPU.match(plain):
        return "gpus", _gpu_name(match), provisioning
    if match := _PART.match(plain):
        family = FAMILY_ALIASES.get(match["family"])
        if family is None and (named := _FAMILY.match(match["family"])):
            family = named["family"].lower()
        return ("cores" if match["part"] == "Core" else "ram", family, provisioning) if family else None
    for prefix, machine_type in _FIXED.items():
        if plain.startswith(prefix + " running in "):
            return "fixed", machine_type, provisioning
    return None


def rate_tables(catalog: Iterable[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per-region rate tables (see the module's doc) from the catalog's SKUs."""
    tables: dict[str, dict[str, Any]] = {}
    for sku in catalog:
        found = _classify(sku)
        price = _unit_price(sku) if found else None
        if price is None:
            continue
        table_name, key, provisioning = found
        for region in sku.get("serviceRegions", []):
            table = tables.setdefault(region, {"cores": {}, "ram": {}, "gpus": {}, "fixed": {}, "disks": {}})
            if provisioning is None:
                table[table_name][key] = price
            else:
                table[table_name].setdefault(key, {})[provisioning] = price
    return tables


def family(machine_type: str) -> str:
    """``n2`` for ``n2-standard-4``."""
    return machine_type.split("-")[0].lower()


def machine_price(table: dict[str, Any], machine: dict[str, Any], spot: bool, where: str,
                  field: str = "worker_vm_types") -> float:
    """$/hour of ``machine`` (``{"name", "vcpus", "memory_gib", "gpus", "gpu_type"}``) as
    Compute Engine bills it: vCPUs × the family's vCPU rate + GiB × its RAM rate (shared-core
    E2 types bill their share of a vCPU; f1/g1 have a rate of their own) + GPUs × the
    accelerator's rate. ClusterSpecError naming ``field`` when a rate is not published."""
    name = machine["name"]
    provisioning = "spot" if spot else "on-demand"

    def rate(kind: str, key: str, what: str) -> float:
        price = table.get(kind, {}).get(key, {}).get(provisioning)
        if price is None:
            known = sorted(k for k, v in table.get(kind, {}).items() if provisioning in v)
            raise ClusterSpecError(
                f"{field}: no {provisioning} price is published for {what} of {name!r} in {where}; "
                f"{_KINDS[kind]} priced there: {', '.join(known) or 'none'}", field)
        return float(price)

    if name in _FIXED.values():
        price = rate("fixed", name, "the machine type")
    else:
        fam = family(name)
        cores = E2_SHARED_CORE.get(name, float(machine["vcpus"]))
        price = cores * rate("cores", fam, f"the {fam.upper()} vCPUs") + \
            float(machine["memory_gib"]) * rate("ram", fam, f"the {fam.upper()} memory")
    if machine.get("gpus"):
        gpu = machine.get("gpu_type")
        if not gpu:
            raise ClusterSpecError(f"{field}: {name!r} has {machine['gpus']} GPUs of no named type", field)
        price += int(machine["gpus"]) * rate("gpus", gpu, f"the GPU {gpu}")
    return price


def disk_price(table: dict[str, Any], disk_type: str, where: str) -> float:
    """$/GiB-month of a persistent disk type."""
    price = table.get("disks", {}).get(disk_type)
    if price is None:
        raise ClusterSpecError(f"no price is published for the persistent disk type {disk_type!r} in {where}; "
                               f"priced: {', '.join(sorted(table.get('disks', {}))) or 'none'}")
    return float(price)
