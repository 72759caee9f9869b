"""GCP prices from the Cloud Billing Catalog API: what the first quote of the day costs (the
whole Compute Engine catalog read page by page, parsed into per-region rate tables and
cached in the store) and what every later quote costs (the store's cached table), and an
estimate made either way.

The catalog is served by the tests' fake (tests/gcpbilling.py) at the size of the real
one: about 30,000 SKUs, 5,000 a page, 40 regions, most of them SKUs that price nothing a
cluster uses (licences), as in Google's. Network time to Google is not in these figures.
Targets (printed, not asserted): cold quote <= 10 s, cached quote <= 5 ms (median).

Usage (from the repository root): python benchmarks/gcp_prices.py [--regions 40] [--repeat 200]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

MACHINE = {"name": "n2-standard-4", "vcpus": 4, "memory_gib": 16.0, "gpus": 0, "gpu_type": None}
LICENCES_PER_REGION = 720


def catalog(regions: int) -> list[dict]:
    """The fake's SKUs once per region, plus licence SKUs, in a shuffled-looking order."""
    from tests.gcpbilling import SKUS, sku_json

    out = []
    for r in range(regions):
        region = f"region-{r}"
        rows = [(d, fam, grp, use, unit, [region], usd) for d, fam, grp, use, unit, _, usd in SKUS]
        rows += [(f"Licensing Fee for Some OS on VM with {v} VCPU", "License", "SomeOS", "OnDemand", "h", [region],
                  0.01 * (v + 1)) for v in range(LICENCES_PER_REGION)]
        out += [sku_json(len(out) + i, *row) for i, row in enumerate(rows)]
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--regions", type=int, default=40)
    parser.add_argument("--repeat", type=int, default=200, help="cached quotes to time")
    args = parser.parse_args()

    import dask.config
    from google.oauth2.credentials import Credentials

    from coiled_lab.control.store import Store
    from coiled_lab.pricing import PriceBook, estimate
    from coiled_lab.spec import parse_spec
    from tests.gcpbilling import TOKEN, BillingCatalog
    from tests.test_pricing_gcp import FakeGCPBackend

    skus = catalog(args.regions)
    server = BillingCatalog(skus, page=5000)
    spec = parse_spec(backend="gcp", n_workers=10, region="region-7", worker_vm_types=["n2-standard-4"])
    try:
        with tempfile.TemporaryDirectory() as tmp, dask.config.set({"coiled-lab.gcp.endpoints.billing": server.url}):
            book = PriceBook(Store(Path(tmp) / "s.sqlite"), gcp=Credentials(token=TOKEN))
            t = time.perf_counter()
            cold = asyncio.run(book.gcp_machine("region-3", MACHINE, spot=False))
            cold_s = time.perf_counter() - t
            assert not cold["snapshot"], cold
            pages = len(server.requests)

            async def cached() -> list[float]:
                times = []
                for i in range(args.repeat):
                    t = time.perf_counter()
                    await book.gcp_machine(f"region-{i % args.regions}", MACHINE, spot=bool(i % 2))
                    times.append(time.perf_counter() - t)
                return times

            warm = asyncio.run(cached())
            t = time.perf_counter()
            est = asyncio.run(estimate(spec, FakeGCPBackend(), book))
            estimate_ms = (time.perf_counter() - t) * 1000
            assert len(server.requests) == pages and est["source"] == "Cloud Billing Catalog API"
    finally:
        server.close()

    print(f"catalog: {len(skus)} SKUs in {pages} pages, {args.regions} regions")
    print(f"cold quote (read, parse, cache every region): {cold_s:.2f} s   target <= 10 s")
    print(f"cached quote: median {statistics.median(warm) * 1000:.2f} ms, max {max(warm) * 1000:.2f} ms "
          f"over {len(warm)}   target <= 5 ms (median)")
    print(f"estimate from the cache (scheduler, workers, disk): {estimate_ms:.1f} ms; ${est['per_hour']:.4f}/hour")


if __name__ == "__main__":
    main()
