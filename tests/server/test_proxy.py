"""The dashboard proxy, as a browser meets it (issue 18, item 1).

The link every front door hands out (``/coiled-lab/clusters/{id}/dashboard/...``) needs
Jupyter's credentials and only redirects to the cluster's keyed prefix, leaving Jupyter's
auth parameters behind. The keyed prefix forwards path and query to the dashboard its
cluster's record names, with no Jupyter credential (token, cookie, XSRF), on the key
alone; every answer, however made (buffered, streamed, redirect, error), carries the
sandboxing Content-Security-Policy and only the upstream headers a dashboard needs (no
Set-Cookie, Clear-Site-Data, HSTS or CORS of its own). A key opens its own cluster only.
"""

from __future__ import annotations

import json
import socket
import time
from typing import Any, Optional
from urllib.parse import urlsplit

import dask.config
import pytest
from tornado.httpclient import AsyncHTTPClient, HTTPClientError, HTTPRequest, HTTPResponse
from tornado.websocket import websocket_connect

from coiled_lab.control.states import State
from coiled_lab.control.store import ClusterRecord

SANDBOX = "sandbox allow-scripts allow-forms allow-popups allow-downloads"
HOSTILE_HEADERS = {
    "Set-Cookie": "_xsrf=chosen-by-the-dashboard; Path=/",
    "Clear-Site-Data": '"cookies", "storage"',
    "Strict-Transport-Security": "max-age=31536000; includeSubDomains",
    "Access-Control-Allow-Origin": "*",
    "Content-Security-Policy": "default-src *",
    "X-Upstream": "dropped",
}


@pytest.fixture
def jp_server_config(jp_server_config):
    """No reconcile pass touches the hand-made records below during the test."""
    with dask.config.set({"coiled-lab.manager.check-interval": 3600}):
        yield jp_server_config


class Dashboard:
    """A dashboard on 127.0.0.1 that echoes each request (path, query, headers) and sets
    every header a hostile one would; ``/away`` redirects, ``/ws`` is a websocket."""

    def __init__(self, io_loop) -> None:
        import tornado.web
        from tornado.websocket import WebSocketHandler

        class Echo(tornado.web.RequestHandler):
            def get(self, *_: Any) -> None:
                for name, value in HOSTILE_HEADERS.items():
                    self.set_header(name, value)
                if self.request.path == "/away":
                    self.redirect("/status")
                    return
                self.write({"path": self.request.uri, "headers": dict(self.request.headers)})

            post = get

            def check_xsrf_cookie(self) -> None:
                """A Dask dashboard checks none."""

        class Socket(WebSocketHandler):
            def check_origin(self, origin: str) -> bool:
                return True  # as bokeh's allow_websocket_origin=["*"] in a dashboard

            def on_message(self, message: Any) -> None:
                self.write_message(json.dumps({"echo": message, "cookie": self.request.headers.get("Cookie")}))

        async def listen():
            return tornado.web.Application([(r"/ws", Socket), (r"/(.*)", Echo)]).listen(0, "127.0.0.1")

        self.server = io_loop.run_until_complete(listen())
        self.url = f"http://127.0.0.1:{next(iter(self.server._sockets.values())).getsockname()[1]}"


@pytest.fixture
def dashboard(jp_asyncio_loop):
    stand_in = Dashboard(jp_asyncio_loop)
    yield stand_in
    stand_in.server.stop()


def closed_port() -> int:
    """A loopback port nothing listens on."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


async def add_cluster(service, cluster_id: str, name: str, dashboard: Optional[str]) -> None:
    manager = await service.manager()
    now = time.time()
    manager.store.insert_cluster(ClusterRecord(
        id=cluster_id, name=name, backend="local", spec={"n_workers": 1}, status=State.running,
        target="running", message=None, state={"dashboard": dashboard} if dashboard else {},
        created_at=now, updated_at=now,
    ))


async def no_credentials(url: str, **kwargs: Any) -> HTTPResponse:
    """A request as a sandboxed page makes it: no cookie, no token, ``Origin: null``."""
    headers = {"Origin": "null", **kwargs.pop("headers", {})}
    return await AsyncHTTPClient().fetch(url, headers=headers, raise_error=False, follow_redirects=False, **kwargs)


def assert_isolated(response: HTTPResponse) -> None:
    """What every answer of the keyed prefix carries, and what it never does."""
    headers = response.headers
    assert headers.get_list("Content-Security-Policy") == [SANDBOX], headers
    assert headers.get("Referrer-Policy") == "no-referrer"
    for name in ("Set-Cookie", "Clear-Site-Data", "Strict-Transport-Security", "Access-Control-Allow-Origin",
                 "X-Upstream"):
        assert name not in headers, (name, headers)


async def test_the_link_redirects_to_the_keyed_prefix_which_forwards_without_credentials(
        service, jp_fetch, jp_serverapp, jp_base_url, jp_http_port, dashboard):
    await add_cluster(service, "feedfacecafe", "echo", dashboard.url)
    token = jp_serverapp.identity_provider.token
    link = await jp_fetch("coiled-lab/clusters", "echo", "dashboard", "individual-plots.json",
                          params={"a": "1 2", "token": token, "_xsrf": "also-jupyters"},
                          headers={"Authorization": ""}, follow_redirects=False, raise_error=False)
    assert link.code == 302
    keyed = link.headers["Location"]
    prefix = f"{jp_base_url}coiled-lab/dashboards/feedfacecafe/"
    assert keyed.startswith(prefix) and keyed.endswith("/individual-plots.json?a=1+2"), keyed
    assert token not in keyed and "_xsrf" not in keyed

    server = f"http://127.0.0.1:{jp_http_port}"
    headers = {"Cookie": "username-127-0-0-1=secret-session; _xsrf=x", "X-XSRFToken": "x",
               "Authorization": f"coiled-lab {service.token}", "X-Test": "kept"}
    seen = await no_credentials(server + keyed + "&token=pasted-by-hand", headers=headers)
    assert seen.code == 200, seen.body
    assert_isolated(seen)
    echoed = json.loads(seen.body)
    assert echoed["path"] == "/individual-plots.json?a=1+2", echoed  # no token, ever
    assert echoed["headers"]["X-Test"] == "kept"
    assert not {"Authorization", "Cookie", "X-Xsrftoken"} & set(echoed["headers"]), echoed["headers"]

    key_prefix = keyed[: keyed.index("/individual-plots.json")]
    # A redirect of the dashboard stays under the keyed prefix.
    away = await no_credentials(f"{server}{key_prefix}/away")
    assert away.code == 302 and away.headers["Location"] == f"{key_prefix}/status", away.headers
    assert_isolated(away)
    # A streamed answer (jupyter-server-proxy copies headers itself there) is isolated too.
    streamed = await no_credentials(f"{server}{key_prefix}/status", headers={"Accept": "text/event-stream"})
    assert streamed.code == 200
    assert_isolated(streamed)
    # The bokeh socket: opened from the sandbox (Origin null, no cookie) on the key alone.
    ws = await websocket_connect(HTTPRequest(f"ws://127.0.0.1:{jp_http_port}{key_prefix}/ws",
                                             headers={"Origin": "null"}))
    await ws.write_message("ping")
    assert json.loads(await ws.read_message()) == {"echo": "ping", "cookie": None}
    ws.close()


async def test_a_key_opens_its_own_cluster_only(service, jp_fetch, jp_http_port, dashboard):
    await add_cluster(service, "aaaaaaaaaaaa", "first", dashboard.url)
    await add_cluster(service, "bbbbbbbbbbbb", "second", dashboard.url)
    await add_cluster(service, "cccccccccccc", "starting", None)
    server = f"http://127.0.0.1:{jp_http_port}"
    link = await jp_fetch("coiled-lab/clusters", "first", "dashboard", "status",
                          follow_redirects=False, raise_error=False)
    first = link.headers["Location"]
    key = urlsplit(first).path.split("/")[-2]
    other = first.replace("aaaaaaaaaaaa", "bbbbbbbbbbbb")
    for refused in (other, first.replace(key, key[::-1]), first.replace(f"/{key}/", "/")):
        answer = await no_credentials(server + refused, headers={"Cookie": "username-127-0-0-1=x"})
        assert answer.code in (403, 404), (refused, answer.code)
        assert_isolated(answer)
    assert (await no_credentials(server + first)).code == 200
    with pytest.raises(HTTPClientError) as ws_refused:
        await websocket_connect(HTTPRequest(f"ws://127.0.0.1:{jp_http_port}{other.replace('/status', '/ws')}",
                                            headers={"Origin": "null"}))
    assert ws_refused.value.code == 403
    # A dashboard that no longer answers (its scheduler just stopped): 502, never a 500.
    await add_cluster(service, "dddddddddddd", "gone", f"http://127.0.0.1:{closed_port()}")
    gone = await jp_fetch("coiled-lab/clusters", "gone", "dashboard", "status",
                          follow_redirects=False, raise_error=False)
    answer = await no_credentials(server + gone.headers["Location"])
    assert answer.code == 502 and b"did not answer" in answer.body, (answer.code, answer.body)
    assert_isolated(answer)
    # A cluster with no dashboard yet: the link says so (409), naming the cluster.
    none = await jp_fetch("coiled-lab/clusters", "starting", "dashboard", "status",
                          follow_redirects=False, raise_error=False)
    assert none.code == 409 and "starting" in json.loads(none.body)["error"]
