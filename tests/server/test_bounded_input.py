"""Every free-form input has a size limit, and an answer never copies a big value back:
megabyte values in every ClusterSpec field, in maps, in query strings, paths and
credential forms are refused with a short 4xx naming the field; bodies over the route's
limit are a 413 naming ``body``; nothing of it is stored."""

from __future__ import annotations

import json

import dask.config
import pytest

from coiled_lab.spec import FIELDS, MAX_ENVIRON_CHARS, MAX_TAGS

BIG = 1_000_000
SHORT = 1024  # the most an error answer may be, whatever the request
MAX_BODY = 1048576  # coiled-lab.api.max-body; POST /clusters takes more (a kernel's environment)


def long_text(mark: str, size: int = BIG) -> str:
    return (mark * (size // len(mark) + 1))[:size]


def assert_short(code: int, reply_bytes: bytes, value: str, field: str, status: int = 400) -> None:
    assert code == status, (code, reply_bytes[:300])
    assert len(reply_bytes) < SHORT, (field, len(reply_bytes), reply_bytes[:300])
    assert value[:100] not in reply_bytes.decode(), field  # at most a short prefix of it
    assert json.loads(reply_bytes)["field"] == field


@pytest.mark.parametrize("route", ["clusters", "estimate"])
async def test_a_huge_value_in_any_field_is_refused_in_a_short_answer(service, api, route):
    for field in FIELDS:
        value = long_text(f"{field}-")
        code, _ = await api("POST", "coiled-lab/api", route, body={field: value})
        assert_short(code, api.bodies[-1], value, field)
    for field, value in [
        ("tags", {"team": long_text("t", 5_000_000)}),
        ("tags", {f"k{n}": "v" for n in range(100_000)}),
        ("tags", {long_text("key-"): "v"}),
        ("environ", {"BIG": long_text("e", 300_000)}),
        ("environ", {f"V{n}": "x" * 255 for n in range(64)}),  # 64 variables, over the total size
        ("worker_vm_types", ["m6i.large"] * 1000),
    ]:
        code, _ = await api("POST", "coiled-lab/api", route, body={field: value})
        if len(json.dumps({field: value})) > MAX_BODY and route == "estimate":
            assert_short(code, api.bodies[-1], json.dumps(value)[:100], "body", 413)
        else:
            assert_short(code, api.bodies[-1], json.dumps(value)[:100], field)
    manager = await service.manager()
    assert manager.store.list_clusters() == []


async def test_the_documented_limits_are_the_enforced_ones(service, api):
    ok = {"tags": {f"k{n}": "v" * 256 for n in range(MAX_TAGS)},
          "environ": {"A": "x" * (MAX_ENVIRON_CHARS - 1)}}
    code, reply = await api("POST", "coiled-lab/api/estimate", body={"backend": "local", **ok})
    assert code == 200, reply
    code, reply = await api("GET", "coiled-lab/api/defaults")
    helps = {f["name"]: f["help"] for f in reply["fields"]}
    assert str(MAX_TAGS) in helps["tags"] and str(MAX_ENVIRON_CHARS) in helps["environ"]


async def test_bodies_over_the_route_limit_are_413(service, api):
    padding = long_text("p", 2_000_000)
    for method, path in [("POST", "estimate"), ("PUT", "credentials"), ("POST", "cleanup"),
                         ("PATCH", "clusters/some-id")]:
        code, reply = await api(method, "coiled-lab/api", *path.split("/"), body={"padding": padding})
        assert code == 413 and reply["field"] == "body" and "coiled-lab.api.max-body" in reply["error"], reply
        assert len(api.bodies[-1]) < SHORT
    # A create may carry a kernel's environment: its own, larger limit.
    code, reply = await api("POST", "coiled-lab/api/clusters", body={"tags": {"x": padding}})
    assert code == 400 and reply["field"] == "tags"
    with dask.config.set({"coiled-lab.api.max-environment-body": 1_000_000}):
        code, reply = await api("POST", "coiled-lab/api/clusters", body={"tags": {"x": padding}})
    assert code == 413 and "coiled-lab.api.max-environment-body" in reply["error"], reply


async def test_queries_paths_and_forms_are_quoted_short(service, api):
    value = long_text("q-", 20_000)
    for parts, params, field, status in [
        (("clusters",), {"live": value}, "live", 400),
        (("catalog",), {"backend": value}, "backend", 400),
        (("catalog",), {"region": value}, "region", 400),
        (("reach",), {"backend": value}, "backend", 400),
        (("clusters", "any", "logs"), {"since": value}, "since", 400),
        (("clusters", "any", "logs"), {"level": value}, "level", 400),
        (("clusters", "any", "logs"), {"limit": value}, "limit", 400),
        (("clusters", value), None, "name_or_id", 404),
    ]:
        code, _ = await api("GET", "coiled-lab/api", *parts, params=params)
        assert_short(code, api.bodies[-1], value, field, status)
    code, _ = await api("PUT", "coiled-lab/api/credentials", body={"provider": "aws", value: "x"})
    assert code == 400 and len(api.bodies[-1]) < SHORT and value[:100] not in api.bodies[-1].decode()
