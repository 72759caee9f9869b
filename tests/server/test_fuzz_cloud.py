"""Random input never costs a cloud call: the server holds AWS credentials and reaches
"AWS" (moto) only through a proxy that counts every request; fuzzed REST requests and
fuzzed ClusterSpecs that the server refuses (400 bad input, 403 over a limit, 404 no
such cluster) made no request to AWS at all, and nothing answers 5xx. (The Price List
API, which moto lacks, is the tests' local stand-in; a valid estimate reads it.)

Choosing instance types for ``worker_memory``/``worker_cpu`` needs the region's catalog,
which the server reads from EC2 once and caches: the test warms it first, so a refusal
that needs the catalog (no such size) is also held to zero requests. One kind of refusal
is the cloud's own answer and cannot be decided without asking: a size picks a type for
which AWS publishes no on-demand price (the stand-in price list knows four types). Such
a refusal may read prices (``GetProducts``, ``DescribeSpotPriceHistory``), never more.

Valid input may reach AWS (an estimate reads prices). A valid create would start a
cluster whose background calls would blur the count, so the admin limit of live
clusters is 0 here: a create that passes validation is refused by that limit (403),
which is checked before any cloud call too.
"""

from __future__ import annotations

import json
import logging

import dask.config
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from coiled_lab.spec import FIELDS

from ..aws.proxy import AWSProxy
from ..pricelist import PriceList
from .test_fuzz import FIXED, PLAUSIBLE, ROUTES, bodies, json_values, params, unconfigured

pytestmark = pytest.mark.slow

REFUSED = (400, 403, 404)  # bad input, over a limit, no such cluster: nothing to ask AWS
PRICE_READS = {"GetProducts", "DescribeSpotPriceHistory"}  # what a "no price for that type" refusal asks
BAD_VALUES = st.sampled_from(
    [-1, 0, 10**9, 1.5, "", " ", "x" * 300, "us-east-99", "m6i.huge", "0.0.0.0/0", "1m", "-5m", "spot-ish",
     [], {}, None, True, "gcp", "aws"]
)


@pytest.fixture(scope="module")
def counted_aws():
    """moto behind a counting proxy, and the price list stand-in, on 127.0.0.1."""
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.WARNING)
    moto = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    moto.start()
    host, port = moto.get_host_and_port()
    proxy = AWSProxy(f"http://{host}:{port}").start()
    prices = PriceList()
    proxy.price_list_url = prices.url
    yield proxy
    prices.close()
    proxy.close()
    moto.stop()


@pytest.fixture
def jp_server_config(jp_server_config, counted_aws, monkeypatch):
    """The server has AWS keys, and AWS is the proxy."""
    for key, value in {
        "AWS_ACCESS_KEY_ID": "AKIAFUZZFUZZFUZZ0001", "AWS_SECRET_ACCESS_KEY": "fuzz-secret",
        "AWS_DEFAULT_REGION": "us-east-1", "AWS_ENDPOINT_URL": counted_aws.url,
        "AWS_ENDPOINT_URL_PRICING": counted_aws.price_list_url, "AWS_CONFIG_FILE": "/dev/null",
        "AWS_SHARED_CREDENTIALS_FILE": "/dev/null", "AWS_EC2_METADATA_DISABLED": "true",
    }.items():
        monkeypatch.setenv(key, value)
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    monkeypatch.delenv("AWS_SESSION_TOKEN", raising=False)
    return jp_server_config


spec_fuzz = st.dictionaries(st.sampled_from(FIELDS), BAD_VALUES | PLAUSIBLE | json_values, min_size=1, max_size=4)


def test_refused_input_makes_no_cloud_call(service, api, jp_asyncio_loop, counted_aws):
    run = jp_asyncio_loop.run_until_complete
    refused_examples, calls_for_refused, answered = [0], [0], {}
    code, _ = run(api("GET", "coiled-lab/api/catalog", params={"backend": "aws", "region": "us-east-1"}))
    assert code == 200 and counted_aws.calls("DescribeInstanceTypes")  # the catalog, read once

    def send(method: str, parts: tuple[str, ...], raw, query) -> None:
        before = len(counted_aws.calls())
        code, reply = run(api(method, *parts, raw=raw, params=query))
        made = len(counted_aws.calls()) - before
        answered[code] = answered.get(code, 0) + 1
        # The server holds AWS keys only: a spec for GCP is told it has none (503), asking AWS nothing.
        assert code < 500 or (unconfigured(code, reply, ("GCP",)) and made == 0), (method, parts, raw, query, reply)
        if code in REFUSED:
            refused_examples[0] += 1
            actions = [c.action for c in counted_aws.calls()[before:]]
            if "publishes no Linux on-demand price" in str(reply):
                assert set(actions) <= PRICE_READS, (method, parts, raw, query, code, reply, actions)
            else:
                calls_for_refused[0] += made
                assert made == 0, (method, parts, raw, query, code, reply, actions)

    common = dict(max_examples=200, deadline=None, database=None, derandomize=FIXED,
                  suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])

    @settings(**common)
    @given(route=st.sampled_from([r for r in ROUTES if r[1] not in ("events", "dashboard")]),
           cluster=st.text(min_size=1, max_size=16), body=bodies, query=params)
    def every_route(route, cluster, body, query):
        method, path = route
        raw = body if isinstance(body, bytes) else (body.encode() if body is not None else None)
        send(method, ("coiled-lab/api", *path.format(id=cluster).split("/")), raw, query)

    @settings(**common)
    @given(spec=spec_fuzz, route=st.sampled_from([("POST", "clusters"), ("POST", "estimate")]))
    @example(spec={"n_workers": 2}, route=("POST", "clusters"))  # valid: refused by the limit (403)
    @example(spec={"worker_cpu": 4, "spot_policy": "on-demand"}, route=("POST", "clusters"))
    @example(spec={"n_workers": 2}, route=("POST", "estimate"))  # valid: reads prices
    def cluster_specs(spec, route):
        method, path = route
        send(method, ("coiled-lab/api", path), json.dumps({"backend": "aws", **spec}).encode(), None)

    with dask.config.set({"coiled-lab.cluster.backend": "aws", "coiled-lab.limits.max-clusters": 0}):
        every_route()
        cluster_specs()
    print(f"answers: {dict(sorted(answered.items()))}; {refused_examples[0]} refused, "
          f"{calls_for_refused[0]} AWS requests made for them; {len(counted_aws.calls())} AWS requests in all")
    # The fuzz reached the checks, and valid input did reach AWS (so the proxy counts).
    assert answered.get(400, 0) >= 100 and answered.get(403, 0) >= 2 and len(counted_aws.calls()) > 0
    assert not run(service.manager()).store.list_clusters()
