"""AWS prices through the real boto3 client against a local Price List endpoint: parsing,
the day-long cache, the labelled regional snapshot when the API fails, refuses or hangs,
and estimates checked by hand."""

from __future__ import annotations

import asyncio
import time

import dask.config
import pytest

from coiled_lab import price_snapshot
from coiled_lab.backends.aws.session import AWSSession
from coiled_lab.control.store import Store
from coiled_lab.pricing import HOURS_PER_MONTH, PriceBook, PriceUnknown, estimate
from coiled_lab.spec import ClusterSpecError, parse_spec

from .pricelist import HANG, ON_DEMAND, PriceList

# Default types the snapshot's source (apache-libcloud's data) has no price for in a region
# (m6a, the AMD fallback, is not offered in many regions and is left out of this list).
SOURCE_GAPS = {("ap-southeast-4", "m6i.large"), ("ap-southeast-4", "m6i.xlarge"), ("eu-south-2", "m6i.large"),
               ("eu-south-2", "m6i.xlarge"), ("ap-southeast-5", "m5.xlarge"), ("ap-southeast-7", "m5.xlarge"),
               ("mx-central-1", "m5.xlarge")}


def Session() -> AWSSession:
    """The AWS backend's own session (its calls run in daemon threads) on test keys."""
    import boto3

    return AWSSession(boto3.Session(aws_access_key_id="testing", aws_secret_access_key="testing",
                                    region_name="us-east-1"))


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


@pytest.fixture
def one_attempt():
    with dask.config.set({"coiled-lab.aws.max-attempts": 1}):
        yield


def test_unreachable_api_falls_back_to_the_labelled_regional_snapshot(tmp_path, monkeypatch, one_attempt):
    monkeypatch.setenv("AWS_ENDPOINT_URL_PRICING", "http://127.0.0.1:9")  # nothing listens there
    book = PriceBook(Store(tmp_path / "s.sqlite"), Session())
    quote = asyncio.run(book.aws_on_demand("us-east-1", "m6i.xlarge"))
    as_of = price_snapshot.as_of("aws")
    assert quote["snapshot"] and quote["as_of"] == as_of and quote["source"] == f"snapshot: prices as of {as_of}, not live"
    assert quote["price"] == price_snapshot.aws_on_demand("us-east-1", "m6i.xlarge")[0]
    assert "could not be used" in quote["reason"]
    # Each region at its own price (Ireland costs more than Virginia), never another region's.
    ireland = asyncio.run(book.aws_on_demand("eu-west-1", "m6i.xlarge"))
    assert ireland["snapshot"] and ireland["price"] == price_snapshot.aws_on_demand("eu-west-1", "m6i.xlarge")[0]
    assert ireland["price"] > quote["price"]
    with pytest.raises(PriceUnknown, match="scheduler_vm_type: no price is known for x2iedn.metal in us-east-1") as info:
        asyncio.run(book.aws_on_demand("us-east-1", "x2iedn.metal", "scheduler_vm_type"))
    assert info.value.field == "scheduler_vm_type" and "does not list it" in str(info.value)
    uncovered = "ap-east-2"  # newer than the snapshot's source
    with pytest.raises(PriceUnknown, match=f"has no prices for {uncovered}"):
        asyncio.run(book.aws_on_demand(uncovered, "m6i.xlarge"))


def test_the_snapshot_covers_every_region_and_default_type():
    """Every region coiled-lab offers on AWS and every type of the default lists, with sizes
    and the region's own figures; the gaps are those of the snapshot's source (regions newer
    than it, types it has no price for there) and are listed here, so a new one fails."""
    from coiled_lab import config

    import boto3

    offered = set(boto3.Session().get_available_regions("ec2", partition_name="aws"))  # the public partition
    assert offered - set(price_snapshot.regions("aws")) == {"ap-east-2", "ap-southeast-6"}
    defaults = [config.get("aws.scheduler-vm-type"), *config.get("aws.worker-vm-types")]
    missing = {(r, name) for r in price_snapshot.regions("aws") for name in defaults
               if name not in price_snapshot.aws_types(r)}
    assert {(r, n) for r, n in missing if not n.startswith("m6a.")} == SOURCE_GAPS
    for region in price_snapshot.regions("aws"):
        for name, size in price_snapshot.aws_types(region).items():
            assert size["vcpu"] >= 1 and size["memory_mib"] >= 1024 and size["gpu"] >= 0, (region, name)
    prices = {r: price_snapshot.aws_on_demand(r, "m6i.xlarge") for r in price_snapshot.regions("aws")}
    assert len({p for p in prices.values() if p}) > 5  # not one region's figure copied everywhere


@pytest.mark.parametrize("fault, attempts, wait", [("500", 10, 1), ("500", 1, 5), ("hang", 10, 1)])
def test_a_failing_or_hanging_price_list_answers_from_the_snapshot_in_time(tmp_path, price_list, fault, attempts,
                                                                            wait):
    """moto answers 500 for the Price List API (botocore retries it, with pauses), a
    firewall may hold the connection: the quote is the snapshot's within pricing.timeout
    whatever the retries, and a failure or a request under way is not asked again per quote."""
    if fault == "500":
        price_list.status = 500
    else:
        price_list.delay = HANG
    book = PriceBook(Store(tmp_path / "s.sqlite"), Session())
    with dask.config.set({"coiled-lab.pricing.timeout": wait, "coiled-lab.aws.max-attempts": attempts}):
        async def thrice():  # in one loop, as in a server
            started = time.monotonic()
            quote = await book.aws_on_demand("us-east-1", "m6i.xlarge")
            took, asked = time.monotonic() - started, len(price_list.requests)
            again = await book.aws_on_demand("us-east-1", "m6i.xlarge")
            started = time.monotonic()
            third = await book.aws_on_demand("us-east-1", "m6i.xlarge")
            return quote, took, asked, again, third, time.monotonic() - started

        quote, took, asked, again, third, third_took = asyncio.run(thrice())
    assert quote["snapshot"] and again["snapshot"] and took < wait + 1
    if attempts == 1:  # failed at once: the snapshot answers at once for a while
        assert "InternalError" in quote["reason"] or "500" in quote["reason"], quote["reason"]
        assert len(price_list.requests) == asked  # (botocore counts max-attempts 1 as one retry)
    else:  # still retrying or held: the request under way is waited for again, not sent again
        assert quote["reason"] == "the AWS Price List API did not answer within 1 s"
        if fault == "hang":
            assert len(price_list.requests) == 1
            # Unanswered for longer than the timeout: not waited for any more (a cost update's pass goes on).
            assert third["snapshot"] and "has not answered for" in third["reason"] and third_took < 0.5


def test_a_slow_answer_is_cached_for_the_next_quote(tmp_path, price_list):
    price_list.delay = 2
    book = PriceBook(Store(tmp_path / "s.sqlite"), Session())

    async def scenario():
        first = await book.aws_on_demand("us-east-1", "m6i.xlarge")
        await asyncio.sleep(3)  # the request goes on after the quote was answered from the snapshot
        return first, await book.aws_on_demand("us-east-1", "m6i.xlarge")

    with dask.config.set({"coiled-lab.pricing.timeout": 0.5}):
        first, second = asyncio.run(scenario())
    assert first["snapshot"] and not second["snapshot"] and second["price"] == ON_DEMAND[("us-east-1", "m6i.xlarge")]
    assert len(price_list.requests) == 1


@pytest.mark.parametrize("volume, per_gb_month", [("standard", 0.05), ("gp2", 0.10), ("gp3", 0.08), ("io1", 0.125),
                                                  ("io2", 0.125), ("st1", 0.045), ("sc1", 0.015)])
def test_offline_estimate_prices_any_root_volume_type(tmp_path, monkeypatch, one_attempt, volume, per_gb_month):
    """The root disk's type is the image's (moto's images: "standard"; Debian's: gp2 or gp3);
    without the Price List API the snapshot prices every EBS type at us-east-1 list prices."""
    monkeypatch.setenv("AWS_ENDPOINT_URL_PRICING", "http://127.0.0.1:9")  # nothing listens there
    book = PriceBook(Store(tmp_path / "s.sqlite"), Session())
    spec = parse_spec(backend="aws", n_workers=2, worker_vm_types=["m6i.xlarge"])
    est = asyncio.run(estimate(spec, FakeBackend(volume_type=volume), book))
    assert est["storage"] == pytest.approx(per_gb_month * 50 * 3 / HOURS_PER_MONTH)
    assert est["per_hour"] == pytest.approx(0.096 + 2 * 0.192 + est["storage"])
    ebs_as_of = price_snapshot.aws_ebs("us-east-1", volume)[1]  # the oldest figure used names the estimate's date
    assert est["source"] == f"snapshot: prices as of {ebs_as_of}, not live" and est["as_of"] == ebs_as_of
    assert any(n.startswith("not live: the AWS Price List API could not be used") for n in est["notes"])


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
