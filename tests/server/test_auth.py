"""Every coiled-lab route refuses a request without credentials; the kernel token opens the
coiled-lab routes and no Jupyter route."""

from __future__ import annotations

import pytest
from tornado.httpclient import HTTPClientError

# (method, path parts, body) for every route; "x" is a cluster that does not exist.
ROUTES = [
    ("GET", ("coiled-lab/api/clusters",), None),
    ("POST", ("coiled-lab/api/clusters",), {"n_workers": 0, "backend": "aws"}),
    ("GET", ("coiled-lab/api/clusters", "x"), None),
    ("PATCH", ("coiled-lab/api/clusters", "x"), {"n_workers": 1}),
    ("DELETE", ("coiled-lab/api/clusters", "x"), None),
    ("GET", ("coiled-lab/api/clusters", "x", "logs"), None),
    ("GET", ("coiled-lab/api/clusters", "x", "connection"), None),
    ("GET", ("coiled-lab/api/clusters", "x", "notifications"), None),
    ("GET", ("coiled-lab/api/clusters", "x", "usage"), None),
    ("GET", ("coiled-lab/api/clusters", "x", "usage", "plot"), None),
    ("GET", ("coiled-lab/api/defaults",), None),
    ("POST", ("coiled-lab/api/estimate",), {"n_workers": 1}),
    ("GET", ("coiled-lab/api/catalog",), None),
    ("POST", ("coiled-lab/api/cleanup",), {"dry_run": True}),
    ("GET", ("coiled-lab/api/credentials",), None),
    ("PUT", ("coiled-lab/api/credentials",), {"provider": "aws", "clear": True}),
    ("GET", ("coiled-lab/api/events",), None),
    ("GET", ("coiled-lab/clusters", "x", "dashboard", "status"), None),
    ("POST", ("coiled-lab/clusters", "x", "dashboard", "status"), {}),
]
WEBSOCKETS = [("coiled-lab/api/events",), ("coiled-lab/clusters", "x", "dashboard", "status", "ws")]
JUPYTER_ROUTES = [("GET", "api/contents"), ("GET", "api/kernels"), ("POST", "api/kernels"), ("GET", "api/terminals")]


async def ws_code(jp_ws_fetch, parts: tuple[str, ...], headers: dict) -> int:
    try:
        ws = await jp_ws_fetch(*parts, headers=headers)
    except HTTPClientError as exc:
        return exc.code
    ws.close()
    return 101


@pytest.mark.parametrize("credentials", ["none", "wrong kernel token", "kernel token as a Jupyter token"])
async def test_routes_refuse_requests_without_valid_credentials(service, api, jp_ws_fetch, credentials):
    headers = {
        "none": {"Authorization": ""},
        "wrong kernel token": {"Authorization": "coiled-lab not-the-token"},
        "kernel token as a Jupyter token": {"Authorization": f"token {service.token}"},
    }[credentials]
    for method, parts, body in ROUTES:
        code, reply = await api(method, *parts, body=body, headers=headers)
        assert code in (401, 403), (method, parts, code, reply)
    for parts in WEBSOCKETS:
        assert await ws_code(jp_ws_fetch, parts, headers) in (401, 403), parts


async def test_kernel_token_opens_coiled_lab_routes_only(service, api, jp_ws_fetch):
    headers = {"Authorization": f"coiled-lab {service.token}"}
    for method, parts, body in ROUTES:
        code, reply = await api(method, *parts, body=body, headers=headers)
        # Past authentication: answered by the route itself (x does not exist, this server
        # has no AWS credentials, and a plain GET of the events socket is not an upgrade).
        assert code in (200, 201, 202, 400, 404, 503), (method, parts, code, reply)
        assert code != 503 or "no usable AWS credentials" in reply["error"], reply
        if parts != WEBSOCKETS[0]:
            assert isinstance(reply, dict) and (code < 400 or "error" in reply), (method, parts, reply)
    assert await ws_code(jp_ws_fetch, WEBSOCKETS[0], headers) == 101
    assert await ws_code(jp_ws_fetch, WEBSOCKETS[1], headers) == 404  # no cluster x

    for method, path in JUPYTER_ROUTES:
        body = {"name": "python3"} if method == "POST" else None
        code, _ = await api(method, path, body=body, headers=headers)
        assert code == 403, (method, path, code)
        code, _ = await api(method, path, body=body, headers={"Authorization": ""}, params={"token": service.token})
        assert code == 403, (method, path, "?token=", code)
    assert await ws_code(jp_ws_fetch, ("api", "events", "subscribe"), headers) == 403

    # The Jupyter token (jp_fetch's default) still opens both.
    code, _ = await api("GET", "coiled-lab/api/clusters")
    assert code == 200
    code, _ = await api("GET", "api/contents")
    assert code == 200


def test_the_matrix_covers_every_route(service):
    """A route added without an entry above would go untested: fail instead."""
    import re

    from coiled_lab_server.handlers import routes

    paths = ["/" + "/".join(parts) for _, parts, _ in ROUTES]
    for pattern, _handler, _kwargs in routes(service):
        assert any(re.fullmatch(pattern, path) for path in paths), f"no auth check for {pattern}"
