"""tools/refresh_prices.py against the APIs it reads, at their HTTP boundary: the local Price
List endpoint, moto's EC2 (instance sizes) and the local Cloud Billing Catalog. What it
writes is read back by coiled-lab's own snapshot reader."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import boto3
import pytest

from coiled_lab import price_snapshot

from .gcpbilling import BillingCatalog
from .pricelist import EBS, ON_DEMAND, PriceList
from .test_pricing_gcp import N2_CORE, N2_RAM, token_credentials

TOOL = Path(__file__).resolve().parents[1] / "tools" / "refresh_prices.py"


@pytest.fixture(scope="module")
def tool():
    spec = importlib.util.spec_from_file_location("refresh_prices", TOOL)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def aws_apis(monkeypatch):
    from moto.server import ThreadedMotoServer

    moto = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    moto.start()
    prices = PriceList()
    host, port = moto.get_host_and_port()
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://{host}:{port}")
    monkeypatch.setenv("AWS_ENDPOINT_URL_PRICING", prices.url)
    yield prices
    prices.close()
    moto.stop()


def test_the_aws_section_comes_from_the_price_list_and_ec2(tool, aws_apis, tmp_path, monkeypatch):
    session = boto3.Session(aws_access_key_id="testing", aws_secret_access_key="testing", region_name="us-east-1")
    names = sorted({name for _, name in ON_DEMAND})
    section = tool.aws_section(session, names, "2030-01-31")
    for (region, name), usd in ON_DEMAND.items():
        assert section["regions"][region]["on_demand"][name] == pytest.approx(usd)
    for (region, volume), usd in EBS.items():
        assert section["ebs"]["regions"][region][volume] == pytest.approx(usd)
    assert section["types"]["m6i.xlarge"] == {"vcpu": 4, "memory_mib": 16384, "gpu": 0, "gpu_maker": None,
                                              "arch": "x86_64", "burstable": False}
    assert section["types"]["g4dn.xlarge"]["gpu"] == 1 and section["types"]["g4dn.xlarge"]["gpu_maker"] == "NVIDIA"
    # One request per type and per volume type, every region at once.
    assert len(aws_apis.requests) == len(names) + len(tool.EBS_TYPES)

    # Written, it is what coiled-lab reads offline: dated, each region at its own price.
    current = json.loads(price_snapshot.PATH.read_text())
    path = tmp_path / "prices-snapshot.json"
    path.write_text(tool.dump({**current, "aws": section}))
    monkeypatch.setattr(price_snapshot, "PATH", path)
    price_snapshot._load.cache_clear()
    try:
        assert price_snapshot.aws_on_demand("eu-west-1", "m6i.xlarge") == (ON_DEMAND[("eu-west-1", "m6i.xlarge")],
                                                                           "2030-01-31")
        assert price_snapshot.aws_ebs("eu-west-1", "gp3") == (EBS[("eu-west-1", "gp3")], "2030-01-31")
        assert set(price_snapshot.aws_types("us-east-1")) == {n for r, n in ON_DEMAND if r == "us-east-1"}
    finally:
        price_snapshot._load.cache_clear()


def test_the_gcp_section_comes_from_the_billing_catalog(tool):
    catalog = BillingCatalog()
    try:
        types = json.loads(price_snapshot.PATH.read_text())["gcp"]["types"]
        section = tool.gcp_section(token_credentials(), types, "2030-01-31", catalog.url)
    finally:
        catalog.close()
    assert section["as_of"] == "2030-01-31" and section["types"] == types and "older" not in section
    central = section["regions"]["us-central1"]
    assert central["cores"]["n2"]["on-demand"] == pytest.approx(N2_CORE)
    assert central["ram"]["n2"]["on-demand"] == pytest.approx(N2_RAM)
    assert "global" not in section["regions"] and json.loads(tool.dump(section)) == section
