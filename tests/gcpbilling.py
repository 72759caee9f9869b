"""A local HTTP endpoint that answers like the Cloud Billing Catalog API's
``GET /v1/services/{service}/skus`` for Compute Engine: a realistic handful of SKUs (vCPU
and RAM of a few machine families, on-demand and Spot, a GPU, persistent disks, and SKUs
that must be ignored: commitments, custom and sole-tenant cores, regional disks, egress),
served a few per page with ``nextPageToken`` as the real API pages its 30 000-odd SKUs.

Prices are Compute Engine's public list prices for us-central1/us-east1 and europe-west1.
Requests without the expected bearer token are refused with 401, as Google does.
"""

from __future__ import annotations

from urllib.parse import parse_qs, urlparse

from .localhttp import JSONHandler, LocalHTTP

SERVICE = "6F81-5844-456A"
TOKEN = "fake-gcp-access-token"
PAGE = 4  # the server's page size, below any client's pageSize, so a catalog read pages
AMERICAS = ["us-central1", "us-east1"]
EUROPE = ["europe-west1"]

# (description, resourceFamily, resourceGroup, usageType, usageUnit, regions, $ per unit)
SKUS = [
    ("N2 Instance Core running in Americas", "Compute", "CPU", "OnDemand", "h", AMERICAS, 0.031611),
    ("N2 Instance Ram running in Americas", "Compute", "RAM", "OnDemand", "GiBy.h", AMERICAS, 0.004237),
    ("Spot Preemptible N2 Instance Core running in Americas", "Compute", "CPU", "Preemptible", "h", AMERICAS, 0.00765),
    ("Spot Preemptible N2 Instance Ram running in Americas", "Compute", "RAM", "Preemptible", "GiBy.h", AMERICAS,
     0.001025),
    ("N2 Instance Core running in EMEA", "Compute", "CPU", "OnDemand", "h", EUROPE, 0.034773),
    ("N2 Instance Ram running in EMEA", "Compute", "RAM", "OnDemand", "GiBy.h", EUROPE, 0.004661),
    ("E2 Instance Core running in Americas", "Compute", "CPU", "OnDemand", "h", AMERICAS, 0.021811),
    ("E2 Instance Ram running in Americas", "Compute", "RAM", "OnDemand", "GiBy.h", AMERICAS, 0.002923),
    ("Spot Preemptible E2 Instance Core running in Americas", "Compute", "CPU", "Preemptible", "h", AMERICAS, 0.006543),
    ("Spot Preemptible E2 Instance Ram running in Americas", "Compute", "RAM", "Preemptible", "GiBy.h", AMERICAS,
     0.000877),
    ("N1 Predefined Instance Core running in Americas", "Compute", "N1Standard", "OnDemand", "h", AMERICAS, 0.031611),
    ("N1 Predefined Instance Ram running in Americas", "Compute", "N1Standard", "OnDemand", "GiBy.h", AMERICAS,
     0.004237),
    ("C3 Instance Core running in Americas", "Compute", "CPU", "OnDemand", "h", AMERICAS, 0.03398),
    ("C3 Instance Ram running in Americas", "Compute", "RAM", "OnDemand", "GiBy.h", AMERICAS, 0.00455),
    ("Compute optimized Core running in Americas", "Compute", "CPU", "OnDemand", "h", AMERICAS, 0.03398),
    ("Compute optimized Ram running in Americas", "Compute", "RAM", "OnDemand", "GiBy.h", AMERICAS, 0.00455),
    ("Nvidia Tesla T4 GPU running in Americas", "Compute", "GPU", "OnDemand", "h", AMERICAS, 0.35),
    ("Nvidia Tesla T4 GPU attached to Spot Preemptible VMs running in Americas", "Compute", "GPU", "Preemptible", "h",
     AMERICAS, 0.11),
    ("Micro Instance with burstable CPU running in Americas", "Compute", "F1Micro", "OnDemand", "h", AMERICAS, 0.0076),
    ("Storage PD Capacity", "Storage", "PDStandard", "OnDemand", "GiBy.mo", AMERICAS, 0.04),
    ("Balanced PD Capacity", "Storage", "SSD", "OnDemand", "GiBy.mo", AMERICAS, 0.10),
    ("SSD backed PD Capacity", "Storage", "SSD", "OnDemand", "GiBy.mo", AMERICAS, 0.17),
    ("Balanced PD Capacity in Belgium", "Storage", "SSD", "OnDemand", "GiBy.mo", EUROPE, 0.11),
    # Not VM or disk list prices: a parser that took them would price wrongly.
    ("Regional Balanced PD Capacity", "Storage", "SSD", "OnDemand", "GiBy.mo", AMERICAS, 0.20),
    ("Commitment v1: N2 Cpu in Americas for 1 Year", "Compute", "CPU", "Commit1Yr", "h", AMERICAS, 0.019915),
    ("N2 Custom Instance Core running in Americas", "Compute", "CPU", "OnDemand", "h", AMERICAS, 0.033191),
    ("N2 Instance Core running in Americas (DWS Defined Duration)", "Compute", "CPU", "OnDemand", "h", AMERICAS,
     0.0237),
    ("Memory Optimized Upgrade Premium for Memory-optimized Instance Core running in Americas", "Compute", "CPU",
     "OnDemand", "h", AMERICAS, 0.0113),
    ("N2 Sole Tenancy Instance Core running in Americas", "Compute", "CPU", "OnDemand", "h", AMERICAS, 0.034772),
    ("Network Internet Egress from Americas to EMEA", "Network", "PremiumInternetEgress", "OnDemand", "GiBy",
     AMERICAS, 0.12),
]


def _money(usd: float) -> dict:
    units = int(usd)
    return {"currencyCode": "USD", "units": str(units), "nanos": round((usd - units) * 1e9)}


def sku_json(i: int, description: str, family: str, group: str, usage: str, unit: str, regions: list[str],
         usd: float) -> dict:
    sku_id = f"{0xA000 + i:04X}-{0xB000 + i:04X}-{0xC000 + i:04X}"
    tiers = [{"startUsageAmount": 0, "unitPrice": _money(usd)}]
    if description.startswith("Storage PD"):  # the catalog lists a zero first tier for some disks
        tiers = [{"startUsageAmount": 0, "unitPrice": _money(0)}, {"startUsageAmount": 0, "unitPrice": _money(usd)}]
    return {
        "name": f"services/{SERVICE}/skus/{sku_id}", "skuId": sku_id, "description": description,
        "category": {"serviceDisplayName": "Compute Engine", "resourceFamily": family, "resourceGroup": group,
                     "usageType": usage},
        "serviceRegions": regions,
        "pricingInfo": [{
            "effectiveTime": "2026-11-23T08:00:00Z", "summary": "",
            "pricingExpression": {"usageUnit": unit, "displayQuantity": 1, "tieredRates": tiers,
                                  "usageUnitDescription": unit, "baseUnit": unit, "baseUnitConversionFactor": 1},
            "currencyConversionRate": 1,
        }],
        "serviceProviderName": "Google",
        "geoTaxonomy": {"type": "MULTI_REGIONAL", "regions": regions},
    }


CATALOG = [sku_json(i, *row) for i, row in enumerate(SKUS)]
SKUS_PATH = f"/v1/services/{SERVICE}/skus"


def skus_page(params: dict[str, str], catalog: list[dict] = CATALOG, page: int = PAGE) -> tuple[int, dict]:
    """The answer to ``GET /v1/services/{service}/skus?params`` (status, JSON): also mounted
    on the tests' fake Google Cloud server (tests/gcp/fakegcp.py), behind its own tokens."""
    if params.get("currencyCode") != "USD":
        return 400, {"error": {"code": 400, "status": "INVALID_ARGUMENT", "message": "currencyCode: expected USD"}}
    start = int(params.get("pageToken") or 0)
    size = min(page, int(params.get("pageSize") or 5000))
    return 200, {"skus": catalog[start:start + size],
                 "nextPageToken": str(start + size) if start + size < len(catalog) else ""}


class BillingCatalog(LocalHTTP):
    """The fake API on 127.0.0.1, serving ``catalog`` (default: :data:`CATALOG`) ``page``
    SKUs at a time; ``requests`` records each page asked for."""

    def __init__(self, catalog: list[dict] = CATALOG, page: int = PAGE) -> None:
        self.catalog, self.page = catalog, page
        super().__init__()

    def _handler(self):
        api = self

        class Handler(JSONHandler):

            def do_GET(self) -> None:
                url = urlparse(self.path)
                params = {k: v[0] for k, v in parse_qs(url.query).items()}
                api.requests.append({"path": url.path, "params": params,
                                     "authorization": self.headers.get("Authorization")})
                if self.headers.get("Authorization") != f"Bearer {TOKEN}":
                    return self.answer(401, {"error": {"code": 401, "status": "UNAUTHENTICATED",
                                                        "message": "Request is missing required authentication."}})
                if url.path != SKUS_PATH:
                    return self.answer(404, {"error": {"code": 404, "status": "NOT_FOUND",
                                                        "message": f"unexpected request {self.path}"}})
                self.answer(*skus_page(params, api.catalog, api.page))

        return Handler
