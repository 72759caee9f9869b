"""The bundled price snapshot: what a cloud's prices and machine sizes were on a date.

When a cloud's price API or catalog cannot answer in time (no credentials, no network,
an endpoint that fails or hangs), :mod:`coiled_lab.pricing` and the backends' catalogs
answer from ``prices-snapshot.json`` instead, and say so: every quote from it carries the
date of its figures, and front doors show "prices as of <date>, not live".

The file has one section per cloud, each with ``as_of``, ``source`` (where the figures
come from, in words), ``types`` (the sizes of the machine types it prices: vCPUs,
memory, GPUs) and ``regions`` (AWS: each region's Linux on-demand $/hour by instance type;
GCP: each region's rate table, as :mod:`coiled_lab.billing_catalog` makes them). A region's
prices are that region's only: a region the snapshot lacks has no offline price. AWS's
``ebs`` and GCP's ``older`` hold figures of another date and source (EBS $/GB-month; GCP
rates the main source lacks), told apart in every quote. ``tools/refresh_prices.py``
writes the file again from the live APIs.
"""

from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import Any, Optional

PATH = Path(__file__).with_name("prices-snapshot.json")
TABLE_KINDS = ("cores", "ram", "gpus", "fixed", "disks")


@functools.lru_cache(maxsize=1)
def _load() -> dict[str, Any]:
    return json.loads(PATH.read_text())


def label(as_of: str) -> str:
    """How every front door names a figure from the snapshot."""
    return f"prices as of {as_of}, not live"


def quote(price: float, as_of: str, reason: str) -> dict[str, Any]:
    """A price from the snapshot in the shape of a live quote; ``reason``: why not live."""
    return {"price": price, "source": f"snapshot: {label(as_of)}", "as_of": as_of, "snapshot": True,
            "reason": reason}


def regions(cloud: str) -> list[str]:
    """The regions the snapshot prices."""
    section = _load()[cloud]
    older = section.get("older", {}).get("regions", {})
    return sorted({*section["regions"], *older})


def as_of(cloud: str) -> str:
    return _load()[cloud]["as_of"]


# -- AWS ------------------------------------------------------------------------------------
def aws_on_demand(region: str, vm_type: str) -> Optional[tuple[float, str]]:
    """$/hour of ``vm_type`` in ``region`` and the date of that figure; None if not listed."""
    aws = _load()["aws"]
    price = aws["regions"].get(region, {}).get("on_demand", {}).get(vm_type)
    return None if price is None else (float(price), aws["as_of"])


def aws_ebs(region: str, volume: str) -> Optional[tuple[float, str]]:
    """$/GB-month of an EBS volume type in ``region`` and the date of that figure; None if not listed."""
    ebs = _load()["aws"]["ebs"]
    price = ebs["regions"].get(region, {}).get(volume)
    return None if price is None else (float(price), ebs["as_of"])


def aws_types(region: str) -> dict[str, dict[str, Any]]:
    """The sizes (``vcpu``, ``memory_mib``, ``gpu``, ``gpu_maker``, ``arch``, ``burstable``)
    of each instance type the snapshot prices in ``region``, by name."""
    aws = _load()["aws"]
    priced = aws["regions"].get(region, {}).get("on_demand", {})
    return {name: size for name, size in aws["types"].items() if name in priced}


# -- GCP ------------------------------------------------------------------------------------
def gcp_table(region: str) -> Optional[tuple[dict[str, Any], str]]:
    """The region's rate table (the main figures, completed by the ``older`` ones) and the
    date to show for it: the older date when the table holds any older figure. None if the
    snapshot has no prices for the region."""
    gcp = _load()["gcp"]
    main = gcp["regions"].get(region)
    older = gcp.get("older", {}).get("regions", {}).get(region)
    if main is None and older is None:
        return None
    table: dict[str, Any] = {kind: dict((main or {}).get(kind, {})) for kind in TABLE_KINDS}
    for kind, entries in (older or {}).items():
        for key, value in entries.items():
            table[kind].setdefault(key, value)
    return table, gcp["older"]["as_of"] if older else gcp["as_of"]


def gcp_types() -> dict[str, dict[str, Any]]:
    """The sizes (``vcpus``, ``memory_mib``, ``gpus``, ``gpu_type``) of the machine types the
    snapshot knows, by name (which of them a region prices, its rate table says)."""
    return _load()["gcp"]["types"]
