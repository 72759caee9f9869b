"""dask-labextension as a first-class partner, in a real browser with both extensions.

Against a real ``jupyter lab`` (local backend) whose ``coiled-lab.dask-labextension-factory``
is on: a coiled-lab cluster is in dask-labextension's CLUSTERS list with its workers and
coiled-lab's dashboard link; our sidebar's Dashboard button hands it to dask-labextension's
panes (and selects it in its list), which render through coiled-lab's proxy; its "+NEW" makes a coiled-lab cluster that
our sidebar shows; stopping the cluster the panes show (from our sidebar) moves them to the
other cluster; its SHUTDOWN stops that one, and the panes are cleared: no request goes to a
stopped cluster's dashboard after that, and the page reports no error.
"""

from __future__ import annotations

import re
from contextlib import contextmanager
from typing import Iterator

import pytest
from playwright.sync_api import expect

from coiled_lab.tls import TLSMaterial
from tests.conftest import wait_for

from .conftest import docs_screenshot
from .lab import JupyterLab, installed_labextension
from .test_sidebar import card, open_sidebar

pytestmark = [pytest.mark.slow, pytest.mark.timeout(360)]

DASK_SIDEBAR = "#dask-dashboard-launcher"


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[JupyterLab]:
    """A lab whose dask-labextension "+NEW" makes coiled-lab clusters."""
    if installed_labextension() is None:
        pytest.fail("the coiled-lab lab extension is not installed; build it with `pip install -e .`")
    pytest.importorskip("dask_labextension", reason="dask-labextension is in the test extra: pip install -e .[test]")
    server = JupyterLab(tmp_path_factory.mktemp("lab"))
    with pytest.MonkeyPatch.context() as env:
        env.setenv("DASK_COILED_LAB__DASK_LABEXTENSION_FACTORY", "true")
        env.setenv("DASK_COILED_LAB__CLUSTER__N_WORKERS", "1")  # what "+NEW" asks for
        server.start()
    yield server
    server.close()


def dask_card(page, name: str):
    return page.locator(f"{DASK_SIDEBAR} li.dask-ClusterListingItem", has=page.locator(
        ".dask-ClusterListingItem-title", has_text=re.compile(f"^{re.escape(name)}$")))


def pane_canvas(page, label: str):
    """A bokeh canvas inside dask-labextension's pane ``label``."""
    pane = page.locator(".dask-DaskDashboard-widget", has=page.locator(f'iframe[src*="{label}"]'))
    return pane.frame_locator("iframe").locator("canvas").first


@contextmanager
def client_of(lab: JupyterLab, cluster_id: str) -> Iterator:
    from distributed import Client

    code, conn = lab.api("GET", f"coiled-lab/api/clusters/{cluster_id}/connection")
    assert code == 200, conn
    security = TLSMaterial(conn["tls"]["cert"], conn["tls"]["key"]).security()
    with Client(conn["address"], security=security) as client:
        yield client


def _slow_square(i: int) -> int:
    import time

    time.sleep(0.05)
    return i * i


def live(lab: JupyterLab) -> dict[str, dict]:
    code, body = lab.api("GET", "coiled-lab/api/clusters?live=true")
    assert code == 200, body
    return {c["name"]: c for c in body["clusters"]}


def test_dask_labextension_lists_shows_and_stops_coiled_lab_clusters(page, console, lab, artifacts):
    code, first = lab.api("POST", "coiled-lab/api/clusters", {"name": "partner-a", "n_workers": 2})
    assert code == 201, first
    open_sidebar(page, lab)
    ours = card(page, "partner-a")
    expect(ours).to_have_attribute("data-status", "running", timeout=120_000)

    # Its CLUSTERS list shows the cluster: workers, cores, coiled-lab's dashboard link.
    page.locator('.lm-TabBar-tab[data-id="dask-dashboard-launcher"]').click()
    listed = dask_card(page, "partner-a")
    expect(listed).to_contain_text("Number of Workers: 2", timeout=30_000)
    link = f"/coiled-lab/clusters/{first['id']}/dashboard/"
    expect(listed.locator(".dask-ClusterListingItem-link a")).to_have_text(link)
    assert "Number of Cores: 0" not in listed.inner_text()

    # Hand-off: our Dashboard button points its panes at the cluster, through our proxy.
    page.locator('.lm-TabBar-tab[data-id="coiled-lab-sidebar"]').click()
    with page.expect_request(lambda r: f"{link}individual-plots.json" in r.url):
        ours.get_by_role("button", name="Dashboard").click()
    page.locator('.lm-TabBar-tab[data-id="dask-dashboard-launcher"]').click()
    # Then it selects the cluster in its list, and its panes use its address of the cluster.
    expect(listed).to_have_class(re.compile(r"\bjp-mod-active\b"))
    key = listed.get_attribute("data-cluster-id")
    url_box = page.locator(f"{DASK_SIDEBAR} .dask-URLInput input")
    expect(url_box).to_have_value(re.compile(rf"dask/dashboard/{key}$"))
    page.locator(f"{DASK_SIDEBAR} .dask-DashboardListing-item button", has_text="Task Stream").wait_for()
    page.locator(".lm-MenuBar-itemLabel").get_by_text("File", exact=True).click()
    page.locator(".lm-Menu-itemLabel").get_by_text("Launch Dask Dashboard Layout", exact=True).click()
    for plot in ("individual-task-stream", "individual-workers-memory", "individual-progress"):
        pane_canvas(page, plot).wait_for(timeout=60_000)
        src = page.locator(f'.dask-DaskDashboard-widget iframe[src*="{plot}"]').get_attribute("src")
        assert f"/dask/dashboard/{key}/" in src, src
    # For the README: the panes alone in the main area, after some work.
    others = page.locator(".lm-DockPanel-tabBar .lm-TabBar-tab",
                          has_text=re.compile(r"^(Dashboard: partner-a|Launcher)$"))
    while others.count():
        others.first.click()
        others.first.locator(".lm-TabBar-tabCloseIcon").click()
    with client_of(lab, first["id"]) as client:
        assert sum(client.gather(client.map(_slow_square, range(40)))) == sum(i * i for i in range(40))
    pane_canvas(page, "individual-task-stream").wait_for()
    docs_screenshot(page.locator("#main"), "dask-labextension.png")

    # Its "+NEW" makes a coiled-lab cluster: in both lists, running.
    page.locator(f"{DASK_SIDEBAR} .jp-ToolbarButtonComponent", has_text="NEW").click()
    wait_for(lambda: len(live(lab)) == 2, timeout=120, what="a second coiled-lab cluster")
    (second,) = [c for name, c in live(lab).items() if name != "partner-a"]
    assert second["spec"]["n_workers"] == 1, second
    expect(dask_card(page, second["name"])).to_contain_text("Number of Workers: 1", timeout=120_000)
    expect(card(page, second["name"])).to_have_attribute("data-status", "running")

    # Stopping the cluster the panes show, from our sidebar: they move to the other one.
    page.locator('.lm-TabBar-tab[data-id="coiled-lab-sidebar"]').click()
    ours.get_by_role("button", name="Stop").click()
    page.locator(".jp-Dialog button.jp-mod-warn").click()
    ours.wait_for(state="detached", timeout=120_000)
    page.locator('.lm-TabBar-tab[data-id="dask-dashboard-launcher"]').click()
    expect(dask_card(page, "partner-a")).to_have_count(0)
    expect(url_box).not_to_have_value(re.compile(key))
    task_stream = page.locator('.dask-DaskDashboard-widget iframe[src*="individual-task-stream"]')
    expect(task_stream).not_to_have_attribute("src", re.compile(key))
    pane_canvas(page, "individual-task-stream").wait_for(timeout=60_000)

    # Its SHUTDOWN stops the coiled-lab cluster; with none left, the panes are cleared.
    stopped = [first["id"], second["id"]]
    dead = re.compile("|".join(rf"/coiled-lab/clusters/{i}/|/coiled-lab/dashboards/{i}/" for i in stopped))
    late: list[str] = []
    dask_card(page, second["name"]).locator(".dask-ClusterListingItem-stop").click()
    wait_for(lambda: not live(lab), timeout=120, what="the +NEW cluster stopping")
    expect(card(page, second["name"])).to_have_count(0, timeout=60_000)
    expect(url_box).to_have_value(re.compile(r"/coiled-lab/no-live-cluster/$"), timeout=30_000)
    expect(page.locator(".dask-DaskDashboard-widget iframe[src]:not([src=''])")).to_have_count(0)
    expect(page.locator(".dask-DaskDashboard-inactive").first).to_be_visible()

    # Nothing polls a stopped cluster's dashboard: none asked for through two of its list refreshes.
    page.on("request", lambda r: late.append(r.url) if dead.search(r.url) or "/dask/dashboard/" in r.url else None)
    for _ in range(2):
        with page.expect_request(lambda r: r.url.split("?")[0].endswith("/dask/clusters"), timeout=30_000):
            pass
    assert not late, late
    page.screenshot(path=artifacts / "dask-labextension-cleared.png")
