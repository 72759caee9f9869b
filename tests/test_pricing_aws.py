"""AWS prices through the real boto3 client against a local Price List endpoint: parsing,
the day-long cache, the labelled snapshot fallback, and estimates checked by hand."""

from __future__ import annotations

import asyncio

import pytest

from coiled_lab.control.store import Store
from coiled_lab.pricing import HOURS_PER_MONTH, PriceBook, estimate
from coiled_lab.spec import ClusterSpecError, parse_spec

from .pricelist import PriceList


class Session:
    """The one method PriceBook needs from the AWS backend's session, on plain boto3."""

    def __init__(self):
        import boto3

        self.boto3 = boto3.Session(aws_access_key_id="testing", aws_secret_access_key="testing",
                                   region_name="us-east-1")

    async def call(self, service, region, operation, **params):
        client = self.boto3.client(service, region_name=region)
        return await asyncio.to_thread(getattr(client, operation), **params)


class FakeBackend:
    """What the AWS backend answers to ``price_inputs`` for these specs."""

    name = "aws"

    def __init__(self, spot_price=None, volume_type="gp3"):
        self.spot_price = spot_price
        self.volume_type = volume_type

    async def price_inputs(self, spec):
        return {"region": spec.region or "us-east-1", "scheduler_type": "m6i.large",
                "worker_type": (spec.worker_vm_types or ["m6i.xlarge"])[0], "spot_price": self.spot_price,
                "volume_gb": 50, "volume_type": self.volume_type}


@pytest.fixture
def price_list(monkeypatch):
    server = PriceList()
    monkeypatch.setenv("AWS_ENDPOINT_URL_PRICING", server.url)
    yield server
    server.close()


def test_prices_come_from_the_price_list_and_are_cached(tmp_path, price_list):
    book = PriceBook(Store(tmp_path / "s.sqlite"), Session())
    quote = asyncio.run(book.aws_on_demand("us-east-1", "m6i.xlarge"))
    assert quote["price"] == 0.192 and quote["source"] == "AWS Price List API" and not quote["snapshot"]
    request = price_list.requests[-1]
    filters = {f["Field"]: f["Value"] for f in request["Filters"]}
    assert filters == {"instanceType": "m6i.xlarge", "regionCode": "us-east-1", "operatingSystem": "Linux",
                       "tenancy": "Shared", "preInstalledSw": "NA", "capacitystatus": "Used"}
    assert asyncio.run(book.aws_storage("us-east-1"))["price"] == 0.08
    asked = len(price_list.requests)
    assert asyncio.run(book.aws_on_demand("us-east-1", "m6i.xlarge"))["price"] == 0.192
    assert len(price_list.requests) == asked  # answered from the store's cache


def test_expired_cache_asks_again(tmp_path, price_list, monkeypatch):
    import coiled_lab.pricing as pricing

    book = PriceBook(Store(tmp_path / "s.sqlite"), Session())
    asyncio.run(book.aws_on_demand("us-east-1", "m6i.large"))
    monkeypatch.setattr(pricing, "PRICE_TTL", -1)
    asyncio.run(book.aws_on_demand("us-east-1", "m6i.large"))
    assert len(price_list.requests) == 2


def test_unreachable_api_falls_back_to_the_labelled_snapshot(tmp_path, monkeypatch):
    monkeypatch.setenv("AWS_ENDPOINT_URL_PRICING", "http://127.0.0.1:9")  # nothing listens there
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "1")
    book = PriceBook(Store(tmp_path / "s.sqlite"), Session())
    quote = asyncio.run(book.aws_on_demand("us-east-1", "m6i.xlarge"))
    assert quote["snapshot"] and quote["price"] == 0.192 and quote["as_of"] == "2024-06-01"
    assert quote["source"].startswith("snapshot of 2024-06-01")
    elsewhere = asyncio.run(book.aws_on_demand("ap-south-1", "m6i.xlarge"))
    assert "priced as us-east-1" in elsewhere["source"]
    with pytest.raises(ClusterSpecError, match="no price is known"):
        asyncio.run(book.aws_on_demand("us-east-1", "x2iedn.metal"))
    assert PriceBook(None, None)._from_snapshot(lambda t: t["on_demand"]["m5.large"], "m5.large", "us-east-1",
                                                "test")["price"] == 0.096


@pytest.mark.parametrize("volume, per_gb_month", [("standard", 0.05), ("gp2", 0.10), ("gp3", 0.08), ("io1", 0.125),
                                                  ("io2", 0.125), ("st1", 0.045), ("sc1", 0.015)])
def test_offline_estimate_prices_any_root_volume_type(tmp_path, monkeypatch, volume, per_gb_month):
    """The root disk's type is the image's (moto's images: "standard"; Debian's: gp2 or gp3);
    without the Price List API the snapshot prices every EBS type at us-east-1 list prices."""
    monkeypatch.setenv("AWS_ENDPOINT_URL_PRICING", "http://127.0.0.1:9")  # nothing listens there
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "1")
    book = PriceBook(Store(tmp_path / "s.sqlite"), Session())
    spec = parse_spec(backend="aws", n_workers=2, worker_vm_types=["m6i.xlarge"])
    est = asyncio.run(estimate(spec, FakeBackend(volume_type=volume), book))
    assert est["storage"] == pytest.approx(per_gb_month * 50 * 3 / HOURS_PER_MONTH)
    assert est["per_hour"] == pytest.approx(0.096 + 2 * 0.192 + est["storage"])
    assert est["source"].startswith("snapshot of 2024-06-01") and any("snapshot" in n for n in est["notes"])


def test_estimate_is_scheduler_plus_workers_plus_storage(tmp_path, price_list):
    book = PriceBook(Store(tmp_path / "s.sqlite"), Session())
    spec = parse_spec(backend="aws", n_workers=10, worker_vm_types=["m6i.xlarge"])
    est = asyncio.run(estimate(spec, FakeBackend(), book))
    storage = 0.08 * 50 * 11 / HOURS_PER_MONTH
    assert est["scheduler"] == pytest.approx(0.096)
    assert est["workers"] == pytest.approx(10 * 0.192) and est["worker_each"] == pytest.approx(0.192)
    assert est["storage"] == pytest.approx(storage)
    assert est["per_hour"] == pytest.approx(0.096 + 1.92 + storage)
    assert est["spot_savings"] == 0 and est["source"] == "AWS Price List API"
    assert any("egress" in n for n in est["notes"]) and not any("zones" in n for n in est["notes"])

    spot = parse_spec(backend="aws", n_workers=10, worker_vm_types=["m6i.xlarge"], spot_policy="spot_with_fallback",
                      allow_cross_zone=True)
    est = asyncio.run(estimate(spot, FakeBackend(spot_price=0.07), book))
    assert est["worker_each"] == pytest.approx(0.07)
    assert est["spot_savings"] == pytest.approx(10 * (0.192 - 0.07))
    assert est["per_hour"] == pytest.approx(0.096 + 0.7 + storage)
    assert any("zones" in n for n in est["notes"]) and any("spot" in n for n in est["notes"])

    eu = parse_spec(backend="aws", n_workers=2, region="eu-west-1", worker_vm_types=["m6i.xlarge"])
    with pytest.raises(ClusterSpecError):  # the scheduler type has no eu-west-1 price in this fake list
        asyncio.run(estimate(eu, FakeBackend(), book))
