"""Every coiled-lab route refuses a request without credentials; the kernel token opens the
coiled-lab routes and no Jupyter route. The dashboards' keyed prefix is opened by its key
alone (tests/server/test_proxy.py): no Jupyter credential opens it."""

from __future__ import annotations

import time
from urllib.parse import urlencode

import dask.config
import pytest
from tornado.httpclient import HTTPClientError

from coiled_lab.control.states import State
from coiled_lab.control.store import ClusterRecord

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
    ("GET", ("coiled-lab/api/reach",), None),
    ("POST", ("coiled-lab/api/estimate",), {"n_workers": 1}),
    ("POST", ("coiled-lab/api/environments",), {"python": "3.11", "platform": "linux-x86_64"}),
    ("GET", ("coiled-lab/api/environments", "0" * 32), None),
    ("GET", ("coiled-lab/api/catalog",), None),
    ("GET", ("coiled-lab/api/schema",), None),
    ("POST", ("coiled-lab/api/cleanup",), {"dry_run": True}),
    ("GET", ("coiled-lab/api/credentials",), None),
    ("PUT", ("coiled-lab/api/credentials",), {"provider": "aws", "clear": True}),
    ("GET", ("coiled-lab/api/me",), None),
    ("GET", ("coiled-lab/api/audit",), None),
    ("GET", ("coiled-lab/api/events",), None),
    ("GET", ("coiled-lab/clusters", "x", "dashboard", "status"), None),
    ("GET", ("coiled-lab/dashboards", "x", "not-its-key", "status"), None),
    ("POST", ("coiled-lab/dashboards", "x", "not-its-key", "status"), {}),
]
WEBSOCKETS = [("coiled-lab/api/events",), ("coiled-lab/clusters", "x", "dashboard", "status", "ws")]
KEYED = "coiled-lab/dashboards"  # the dashboards' keyed prefix: its key is its only credential
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
        if parts[0] == KEYED:
            assert code == 403, (method, parts, code, reply)
            continue
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


# == browsers: a session cookie alone is not enough ========================================
FOREIGN_ROUTES = JUPYTER_ROUTES + [
    ("GET", "api/sessions"), ("POST", "api/sessions"), ("GET", "api/kernelspecs"), ("GET", "api/config/notebook"),
    ("PUT", "api/contents/x.txt"), ("GET", "api/me"),
]
FOREIGN_WEBSOCKETS = [("api", "events", "subscribe"), ("api", "kernels", "00000000-0000-0000-0000-000000000000", "channels"),
                      ("terminals", "websocket", "1")]


@pytest.fixture
def browser(service, jp_fetch, jp_serverapp, jp_asyncio_loop) -> dict[str, str]:
    """A browser's session: logged in through Jupyter's login form, as a person would,
    holding the session cookie and the ``_xsrf`` cookie (and knowing its value)."""
    run = jp_asyncio_loop.run_until_complete
    page = run(jp_fetch("login", headers={"Authorization": ""}))
    xsrf = next(c for c in page.headers.get_list("Set-Cookie") if c.startswith("_xsrf=")).split(";")[0][6:]
    login = run(jp_fetch(
        "login", method="POST", headers={"Authorization": "", "Cookie": f"_xsrf={xsrf}"},
        body=urlencode({"password": jp_serverapp.identity_provider.token, "_xsrf": xsrf}),
        follow_redirects=False, raise_error=False,
    ))
    assert login.code == 302, login.code
    session = "; ".join(c.split(";")[0] for c in login.headers.get_list("Set-Cookie"))
    return {"cookie": f"{session}; _xsrf={xsrf}", "xsrf": xsrf}


class StandInDashboard:
    """A dashboard answering HTTP (any method) and a bokeh-like WebSocket on 127.0.0.1,
    recorded as a live cluster's dashboard, so the proxy really forwards."""

    NAME = "live-dashboard"

    def __init__(self, service, run) -> None:
        import tornado.web
        from tornado.websocket import WebSocketHandler

        class Page(tornado.web.RequestHandler):
            def get(self, *_):
                self.write({"ok": True})

            post = put = patch = delete = get

        class Bokeh(WebSocketHandler):
            def on_message(self, message):
                self.write_message(message)

        async def listen():
            return tornado.web.Application([(r"/status/ws", Bokeh), (r"/(.*)", Page)]).listen(0, "127.0.0.1")

        self.server = run(listen())
        port = next(iter(self.server._sockets.values())).getsockname()[1]
        manager = run(service.manager())
        now = time.time()
        manager.store.insert_cluster(ClusterRecord(
            id="da5hb0ard000", name=self.NAME, backend="local", spec={"n_workers": 1}, status=State.running,
            target="running", message=None, state={"dashboard": f"http://127.0.0.1:{port}"},
            created_at=now, updated_at=now,
        ))


@pytest.fixture
def dashboard(service, jp_asyncio_loop):
    with dask.config.set({"coiled-lab.manager.check-interval": 3600}):  # no reconcile of the hand-made record
        stand_in = StandInDashboard(service, jp_asyncio_loop.run_until_complete)
        yield stand_in
        stand_in.server.stop()


def live(parts: tuple[str, ...]) -> tuple[str, ...]:
    """The route's parts with the dashboard routes pointed at the stand-in's live cluster."""
    return tuple(StandInDashboard.NAME if p == "x" and parts[0] == "coiled-lab/clusters" else p for p in parts)


async def test_browser_cookie_needs_the_xsrf_token_on_every_unsafe_method(service, api, browser, dashboard,
                                                                         jp_fetch, jp_base_url):
    """A page on another origin can make the browser send the cookie, not read the
    ``_xsrf`` cookie: every route that changes something refuses a request without it.
    The dashboards' keyed prefix takes no cookie at all: its key is its credential."""
    cookie_only = {"Authorization": "", "Cookie": browser["cookie"]}
    with_xsrf = {**cookie_only, "X-XSRFToken": browser["xsrf"]}
    unsafe = [(m, live(p), b) for m, p, b in ROUTES if m not in ("GET", "HEAD") and p[0] != KEYED]
    assert {m for m, _, _ in unsafe} == {"POST", "PATCH", "DELETE", "PUT"}
    for method, parts, body in unsafe:
        code, reply = await api(method, *parts, body=body, headers=cookie_only)
        assert code == 403 and "_xsrf" in reply["error"], (method, parts, code, reply)
        # The same request from the page itself (which can read the token) is answered.
        code, reply = await api(method, *parts, body=body, headers=with_xsrf)
        assert code != 403, (method, parts, code, reply)
    link = await jp_fetch("coiled-lab/clusters", StandInDashboard.NAME, "dashboard", "status",
                          headers=with_xsrf, follow_redirects=False, raise_error=False)
    assert link.code == 302  # to the keyed prefix, where the key and no cookie opens the dashboard
    code, _ = await api("POST", link.headers["Location"][len(jp_base_url):], body={}, headers={"Authorization": ""})
    assert code == 200  # reached the stand-in dashboard
    code, _ = await api("GET", "coiled-lab/api/clusters", headers=cookie_only)
    assert code == 200  # reads need no token: the same-origin policy keeps their answers from other pages


async def test_websockets_refuse_pages_from_another_origin(service, browser, dashboard, jp_http_port, jp_base_url):
    """Cross-site WebSocket hijacking: a page elsewhere opening the events socket with the
    user's cookie is refused, the lab's own page is not. A dashboard's bokeh socket is
    refused to a cookie from anywhere: it opens on its key alone (test_proxy.py)."""
    from tornado.httpclient import HTTPRequest
    from tornado.websocket import websocket_connect

    server = f"127.0.0.1:{jp_http_port}"  # the host the login cookie was issued for

    async def open_code(path: str, origin: str) -> int:
        request = HTTPRequest(f"ws://{server}{jp_base_url}{path}",
                              headers={"Cookie": browser["cookie"], "Origin": origin})
        try:
            ws = await websocket_connect(request)
        except HTTPClientError as exc:
            return exc.code
        ws.close()
        return 101

    assert await open_code("coiled-lab/api/events", "https://evil.example") == 403
    assert await open_code("coiled-lab/api/events", f"http://{server}") == 101
    for origin in ("https://evil.example", f"http://{server}"):
        assert await open_code(f"coiled-lab/clusters/{StandInDashboard.NAME}/dashboard/status/ws", origin) != 101
        assert await open_code("coiled-lab/dashboards/da5hb0ard000/not-its-key/status/ws", origin) == 403


async def test_kernel_token_opens_no_other_jupyter_route_or_socket(service, api, jp_ws_fetch):
    headers = {"Authorization": f"coiled-lab {service.token}"}
    for method, path in FOREIGN_ROUTES:
        body = {"name": "python3"} if method == "POST" else ({"type": "file", "content": ""} if method == "PUT" else None)
        code, _ = await api(method, path, body=body, headers=headers)
        assert code == 403, (method, path, code)
    for parts in FOREIGN_WEBSOCKETS:
        assert await ws_code(jp_ws_fetch, parts, headers) == 403, parts
