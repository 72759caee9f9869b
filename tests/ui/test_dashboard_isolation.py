"""A cluster's dashboard cannot act as the Jupyter user, and still works (issue 18, item 1).

Against a real ``jupyter lab`` and a real local cluster: a page added to the scheduler's
HTTP server (``run_on_scheduler``, as whoever holds the cluster's TLS key can) is opened
as a user would open it, in a tab of its own (the widget's link) and in an iframe that
allows same-origin (as dask-labextension's panes are). Its script runs in an opaque
origin: it cannot read the session's cookies, list or write files, start a kernel or
reach the lab's document, and its ``Set-Cookie`` does not reach the browser. Meanwhile
bokeh's status page in the lab's dashboard tab renders and keeps updating while work
runs, so does one of dask-labextension's individual plots, found the way it finds them
(``individual-plots.json`` fetched by the lab page), and the widget's link renders the
status page in a tab of its own.
"""

from __future__ import annotations

import json
import time
from typing import Iterator

import cloudpickle
import pytest

from coiled_lab.tls import TLSMaterial
from tests.conftest import wait_for

from . import hostile
from .test_sidebar import card, open_sidebar

pytestmark = [pytest.mark.slow, pytest.mark.timeout(360)]

SECRET_FILE = "secret-notes.txt"  # in the lab's root: no dashboard page may list it


@pytest.fixture(scope="module")
def cluster(lab) -> Iterator[tuple[dict, object]]:
    """A running local cluster, a TLS client of it, and the hostile page on its scheduler."""
    from distributed import Client

    (lab.root / "notebooks" / SECRET_FILE).write_text("not for dashboards")
    code, record = lab.api("POST", "coiled-lab/api/clusters", {"name": "watched", "n_workers": 1})
    assert code == 201, record
    wait_for(lambda: lab.api("GET", f"coiled-lab/api/clusters/{record['id']}")[1]["status"] == "running",
             timeout=120, interval=0.5, what="the cluster running")
    code, conn = lab.api("GET", f"coiled-lab/api/clusters/{record['id']}/connection")
    assert code == 200, conn
    client = Client(conn["address"], security=TLSMaterial(conn["tls"]["cert"], conn["tls"]["key"]).security())
    cloudpickle.register_pickle_by_value(hostile)
    try:
        assert client.run_on_scheduler(hostile.install, page=hostile.PAGE) == "installed"
    finally:
        cloudpickle.unregister_pickle_by_value(hostile)
    yield record, client
    client.close()
    lab.api("DELETE", f"coiled-lab/api/clusters/{record['id']}")


class Sockets:
    """Messages each websocket of a page has received so far, by URL. Playwright's sync API
    delivers events only while it is called: waits here go through the page."""

    def __init__(self, page) -> None:
        self.page = page
        self.received: dict[str, int] = {}
        page.on("websocket", self._opened)

    def _opened(self, ws) -> None:
        self.received.setdefault(ws.url, 0)
        ws.on("framereceived", lambda _frame: self.received.__setitem__(ws.url, self.received[ws.url] + 1))

    def until(self, predicate, what: str, timeout: float = 60):
        deadline = time.monotonic() + timeout
        while not (value := predicate()):
            assert time.monotonic() < deadline, f"timed out after {timeout}s waiting for {what}"
            self.page.wait_for_timeout(100)
        return value

    def ending(self, suffix: str) -> str:
        return self.until(lambda: next((u for u in self.received if u.endswith(suffix)), None),
                          f"a websocket ending {suffix}")

    def keep_updating(self, url: str, client, first: int) -> None:
        """Work runs on the cluster, and the socket receives updates meanwhile."""
        before = self.received[url]
        futures = client.map(time.sleep, [0.1] * 40, pure=False)  # ~4 s on the one worker
        self.until(lambda: self.received[url] >= before + first, f"{first} updates on {url}")
        client.gather(futures)


def hostile_result(locator) -> dict:
    wait_for(lambda: locator.inner_text() != "running", timeout=30, what="the hostile script's report")
    return json.loads(locator.inner_text())


def test_a_dashboard_page_cannot_act_as_the_user_while_the_dashboard_works(page, console, lab, cluster):
    record, client = cluster
    link = f"{lab.url}coiled-lab/clusters/{record['id']}/dashboard"
    sockets = Sockets(page)

    # The dashboard tab: bokeh's status page renders, and updates while work runs.
    open_sidebar(page, lab)
    card(page, "watched").get_by_role("button", name="Dashboard").click()
    page.frame_locator(".jp-CoiledLab-dashboard iframe").locator("canvas").first.wait_for(timeout=60_000)
    sockets.keep_updating(sockets.ending("/status/ws"), client, first=20)

    # dask-labextension's way: the plots listed by individual-plots.json (fetched by the lab
    # page, through the link), one of them in an iframe like its panes.
    plots = page.evaluate("async url => (await fetch(url)).json()", f"{link}/individual-plots.json")
    route = plots["Individual Task Stream"]
    page.evaluate("""src => {
        const pane = document.createElement('iframe');
        pane.id = 'dask-pane';
        pane.sandbox = 'allow-scripts allow-same-origin';  // dask-labextension's panes
        pane.style = 'position: fixed; bottom: 0; width: 600px; height: 300px; z-index: 10000';
        pane.src = src;
        document.body.appendChild(pane);
    }""", link + route)
    page.frame_locator("#dask-pane").locator("canvas").first.wait_for(timeout=60_000)
    sockets.keep_updating(sockets.ending(f"{route}/ws"), client, first=5)

    # The hostile page, where the user's browser would open it.
    xsrf = next(c["value"] for c in page.context.cookies() if c["name"] == "_xsrf")
    kernels = lab.api("GET", "api/kernels")[1]
    other = page.context.new_page()  # same browser session (cookies)
    other.goto(f"{link}/status")  # the widget's link, in a tab of its own: it renders
    other.locator("canvas").first.wait_for(timeout=60_000)
    other.goto(f"{link}/hostile")
    reports = {"tab": hostile_result(other.locator("#result"))}
    other.goto(lab.lab_url)
    other.locator("#jp-main-dock-panel").wait_for()
    other.evaluate("""src => {
        const pane = document.createElement('iframe');
        pane.id = 'hostile-pane';
        pane.sandbox = 'allow-scripts allow-same-origin';
        pane.src = src;
        document.body.appendChild(pane);
    }""", f"{link}/hostile")
    reports["pane"] = hostile_result(other.frame_locator("#hostile-pane").locator("#result"))
    other.close()

    for where, report in reports.items():
        assert report["origin"] == "null", (where, report)
        assert report["cookie"] == "refused: SecurityError", (where, report)
        for attempt in ("contents", "kernel", "write"):
            assert report[attempt].startswith("refused:"), (where, attempt, report)
        assert report["parent"] in ("none", "refused: SecurityError"), (where, report)
        assert SECRET_FILE not in json.dumps(report), (where, report)
    assert lab.api("GET", "api/kernels")[1] == kernels  # none was started, the blind POST included
    assert not (lab.root / "notebooks" / "pwned.txt").exists()
    assert next(c["value"] for c in page.context.cookies() if c["name"] == "_xsrf") == xsrf
