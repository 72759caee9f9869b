"""Random bodies, query strings and ids against every route: never a 5xx, and a 400 always
names what was wrong in the API's error shape.

The default backend is set to one that is not installed, so an empty body (the defaults)
is refused rather than starting a cluster; the rare random body that is a valid local
cluster does start one, and is stopped at the end.
"""

from __future__ import annotations

import json
import os
import time

import dask.config
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tornado.httpclient import HTTPClientError

from coiled_lab.control.states import State
from coiled_lab.control.store import ClusterRecord
from coiled_lab.spec import FIELDS

EVENTS = "events"
ROUTES = [
    ("GET", "clusters"),
    ("POST", "clusters"),
    ("GET", "clusters/{id}"),
    ("PATCH", "clusters/{id}"),
    ("DELETE", "clusters/{id}"),
    ("GET", "clusters/{id}/logs"),
    ("GET", "clusters/{id}/connection"),
    ("POST", "estimate"),
    ("GET", "catalog"),
    ("POST", "cleanup"),
    ("GET", "credentials"),
    ("PUT", "credentials"),
    ("GET", EVENTS),
    ("GET", "dashboard"),
    ("POST", "dashboard"),
]
FORM_FIELDS = ("provider", "access_key_id", "secret_access_key", "region", "service_account", "dry_run", "clear")
PARAMS = ("live", "since", "instance", "q", "level", "limit", "backend", "region", "cluster", "after")
PLAUSIBLE = st.sampled_from(
    ["local", "aws", "gcp", "20m", 0, 1, -1, True, "us-east-1", "AKIAABCDEFGHIJKLMNOP", "stopped-one", 1e308]
)
PLAUSIBLE_PARAMS = st.sampled_from(
    ["true", "no", "1", "-1", "10m", "nan", "1e400", "ERROR", "debug", "aws", "local", "2026-01-01T00:00", "9" * 30]
)

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats() | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4),
    max_leaves=12,
)
spec_like = st.dictionaries(
    st.sampled_from(FIELDS + FORM_FIELDS) | st.text(max_size=10), PLAUSIBLE | json_values, max_size=5
)
bodies = st.one_of(st.none(), spec_like.map(json.dumps), json_values.map(json.dumps), st.binary(max_size=64))
params = st.dictionaries(st.sampled_from(PARAMS), PLAUSIBLE_PARAMS | st.text(max_size=16), max_size=4)


# The same examples on every run by default: CI checks a fixed set (each new bug found by
# exploring becomes part of it); COILED_LAB_FUZZ_RANDOM=1 explores new ones, and pytest's
# --hypothesis-seed=N then replays a run.
FIXED = not os.environ.get("COILED_LAB_FUZZ_RANDOM")


def unconfigured(code: int, reply, clouds: tuple[str, ...] = ("AWS", "GCP")) -> bool:
    """The 503 of a request that reached a cloud the server has no credentials for."""
    error = (reply or {}).get("error", "") if isinstance(reply, dict) else ""
    return code == 503 and any(f"no usable {cloud} credentials" in error for cloud in clouds)


def test_no_input_makes_the_server_fail(service, api, jp_ws_fetch, jp_asyncio_loop):
    run = jp_asyncio_loop.run_until_complete
    manager = run(service.manager())
    now = time.time()
    stopped = ClusterRecord(
        id="0123456789ab", name="stopped-one", backend="local", spec={"n_workers": 1}, status=State.stopped,
        target="stopped", message=None, state={}, created_at=now, updated_at=now, stopped_at=now,
    )
    manager.store.insert_cluster(stopped)
    ids = st.sampled_from([stopped.id, stopped.name]) | st.text(min_size=1, max_size=24)

    @settings(
        max_examples=400, deadline=None, database=None, derandomize=FIXED,
        suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    )
    @given(route=st.sampled_from(ROUTES), cluster=ids, body=bodies, query=params, upgrade=st.booleans())
    def check(route, cluster, body, query, upgrade):
        method, path = route
        if path == "dashboard":
            parts = ("coiled-lab/clusters", cluster, "dashboard", "status")
        else:
            parts = ("coiled-lab/api", *path.format(id=cluster).split("/"))
        if path == EVENTS and upgrade:
            try:
                run(jp_ws_fetch(*parts, params=query)).close()
            except HTTPClientError as exc:
                assert exc.code < 500, (query, exc)
            return
        raw = body if isinstance(body, bytes) else (body.encode() if body is not None else None)
        code, reply = run(api(method, *parts, raw=raw, params=query))
        # The fuzzed server has AWS as its default backend and no AWS or GCP credentials: a
        # request that reaches a cloud is told so (503), which is not a failure.
        assert code < 500 or unconfigured(code, reply), (method, parts, body, query, reply)
        if code == 400 and path != EVENTS:
            assert isinstance(reply, dict) and {"error", "field"} <= set(reply), (method, parts, reply)

    with dask.config.set({"coiled-lab.cluster.backend": "aws"}):
        check()

    for record in run(manager.list(live_only=True)):
        run(manager.stop(record["id"]))
        assert run(manager.wait(record["id"], ("stopped",), 60))["status"] == "stopped"
