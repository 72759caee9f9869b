"""Write coiled-lab's bundled price snapshot again from the clouds' live price APIs.

    python tools/refresh_prices.py [--only aws|gcp] [--output coiled_lab/prices-snapshot.json]

AWS: the Price List API's Linux on-demand, shared-tenancy price of every instance type the
snapshot lists, in every region of AWS's public partition, and the $/GB-month of every EBS
volume type; the types' sizes from EC2's ``DescribeInstanceTypes``. It needs credentials
that may call ``pricing:GetProducts`` and ``ec2:DescribeInstanceTypes`` (boto3's chain).
GCP: the Cloud Billing Catalog API's Compute Engine SKUs, as every region's rate table
(vCPU and RAM by machine family, GPUs, disks; on-demand and Spot); the machine types' sizes
are kept as the snapshot has them. It needs Application Default Credentials (any account
may read the catalog). A section not refreshed (``--only``) is kept as it was; the sections
written carry today's date, and figures of another date (``ebs``, ``older``) are replaced.
"""

from __future__ import annotations

import argparse
import datetime
import json
import sys
from pathlib import Path
from typing import Any, Iterator

from coiled_lab import billing_catalog, price_snapshot
from coiled_lab.backends.aws.catalog import parse_instance_type
from coiled_lab.pricing import LINUX_ON_DEMAND, PRICE_LIST_REGION, on_demand_prices

EBS_TYPES = ("standard", "gp2", "gp3", "io1", "io2", "st1", "sc1")


def _products(pricing: Any, filters: dict[str, str], unit: str) -> Iterator[tuple[str, float]]:
    """(region, lowest price) of a product in every region the Price List API lists it."""
    found: dict[str, float] = {}
    pages = pricing.get_paginator("get_products").paginate(
        ServiceCode="AmazonEC2", FormatVersion="aws_v1",
        Filters=[{"Type": "TERM_MATCH", "Field": k, "Value": v} for k, v in filters.items()])
    for page in pages:
        for attributes, usd in on_demand_prices(page.get("PriceList", []), unit):
            region = attributes.get("regionCode")
            if region:
                found[region] = min(usd, found.get(region, usd))
    yield from found.items()


def aws_section(session: Any, names: list[str], today: str) -> dict[str, Any]:
    """The ``aws`` section for these instance types, from ``session``'s credentials."""
    regions = set(session.get_available_regions("ec2", partition_name="aws"))
    pricing = session.client("pricing", region_name=PRICE_LIST_REGION)
    on_demand: dict[str, dict[str, float]] = {}
    for name in names:
        for region, usd in _products(pricing, {"instanceType": name, **LINUX_ON_DEMAND}, "Hrs"):
            if region in regions:
                on_demand.setdefault(region, {})[name] = usd
    ebs: dict[str, dict[str, float]] = {}
    for volume in EBS_TYPES:
        for region, usd in _products(pricing, {"productFamily": "Storage", "volumeApiName": volume}, "GB-Mo"):
            if region in regions:
                ebs.setdefault(region, {})[volume] = usd
    ec2 = session.client("ec2", region_name=PRICE_LIST_REGION)
    types: dict[str, dict[str, Any]] = {}
    for start in range(0, len(names), 100):  # at most 100 names a request
        for item in ec2.describe_instance_types(InstanceTypes=names[start:start + 100])["InstanceTypes"]:
            t = parse_instance_type(item)
            if t is not None:
                types[t.name] = {"vcpu": t.vcpu, "memory_mib": t.memory // 2**20, "gpu": t.gpu,
                                 "gpu_maker": t.gpu_maker, "arch": t.arch, "burstable": t.burstable}
    source = (f"the AWS Price List API on {today} (EC2 Linux on-demand, shared tenancy; EBS by volume type), "
              "sizes from EC2's DescribeInstanceTypes; written by tools/refresh_prices.py")
    return {"as_of": today, "source": source, "types": {n: types[n] for n in names if n in types},
            "regions": {r: {"on_demand": dict(sorted(p.items()))} for r, p in sorted(on_demand.items())},
            "ebs": {"as_of": today, "source": source, "regions": dict(sorted(ebs.items()))}}


def gcp_section(credentials: Any, types: dict[str, Any], today: str, endpoint: str | None = None) -> dict[str, Any]:
    """The ``gcp`` section: every region's rate table from the billing catalog."""
    tables = billing_catalog.read(credentials, endpoint)
    tables.pop("global", None)
    return {"as_of": today, "source": f"the Cloud Billing Catalog API on {today} (Compute Engine SKUs); machine type "
                                      "sizes as Compute Engine defines them; written by tools/refresh_prices.py",
            "types": types, "regions": dict(sorted(tables.items()))}


def dump(snapshot: dict[str, Any]) -> str:
    """JSON a person can read and diff: one line per innermost table."""
    def encode(value: Any, depth: int) -> str:
        if isinstance(value, dict) and depth < 3 and any(isinstance(v, dict) for v in value.values()):
            pad = "  " * (depth + 1)
            items = [f"{pad}{json.dumps(k)}: {encode(v, depth + 1)}" for k, v in value.items()]
            return "{\n" + ",\n".join(items) + "\n" + "  " * depth + "}"
        return json.dumps(value)

    return encode(snapshot, 0) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", choices=("aws", "gcp"), help="refresh one cloud's section, keep the other")
    parser.add_argument("--output", type=Path, default=price_snapshot.PATH, help="where to write the snapshot")
    ns = parser.parse_args(argv)
    current = json.loads(price_snapshot.PATH.read_text())
    today = datetime.date.today().isoformat()
    if ns.only in (None, "aws"):
        import boto3

        current["aws"] = aws_section(boto3.Session(), sorted(current["aws"]["types"]), today)
    if ns.only in (None, "gcp"):
        import google.auth

        credentials, _ = google.auth.default(scopes=["https://www.googleapis.com/auth/cloud-platform"])
        current["gcp"] = gcp_section(credentials, current["gcp"]["types"], today)
    ns.output.write_text(dump(current))
    for cloud in ("aws", "gcp"):
        print(f"{cloud}: {len(current[cloud]['regions'])} regions as of {current[cloud]['as_of']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
