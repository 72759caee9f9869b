"""A running local cluster in the sidebar: its notification badge (a real "stops soon"
notification from a short idle timeout) and its usage plots (the server's bokeh page)."""

from __future__ import annotations

import re
from typing import Iterator

import pytest
from playwright.sync_api import expect

from tests.conftest import wait_for

from .conftest import ARTIFACTS
from .lab import JupyterLab
from .test_sidebar import SIDEBAR, card, open_sidebar

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]

IDLE_TIMEOUT = 40  # seconds; the warning comes halfway (timeouts shorter than twice the warning)


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[JupyterLab]:
    """A lab whose server warns a minute before a timeout stops a cluster."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("DASK_COILED_LAB__NOTIFICATIONS__SHUTDOWN_WARNING", "1 minute")
        server = JupyterLab(tmp_path_factory.mktemp("lab-usage"))
        server.start()
    yield server
    server.close()


def test_running_cluster_shows_notifications_and_usage(page, console, lab):
    code, created = lab.api("POST", "coiled-lab/api/clusters",
                            {"name": "watched", "n_workers": 1, "idle_timeout": IDLE_TIMEOUT})
    assert code == 201, created
    open_sidebar(page, lab)
    cluster = card(page, "watched")
    expect(cluster).to_have_attribute("data-status", "running", timeout=120_000)
    badge = cluster.locator(".jp-CoiledLab-notificationBadge")
    expect(badge).to_have_attribute("data-count", "0")

    # The usage plots, once the watchdog has a sample: bokeh renders in the card's iframe.
    wait_for(lambda: (u := lab.api("GET", f"coiled-lab/api/clusters/{created['id']}/usage"))[0] == 200
             and u[1]["samples"], timeout=30, interval=0.5, what="a usage sample")
    cluster.get_by_role("button", name="Usage").click()
    frame = page.frame_locator(".jp-CoiledLab-usagePlot")
    frame.locator("canvas").first.wait_for(timeout=30_000)
    expect(frame.locator("body")).not_to_contain_text("No usage samples")
    src = cluster.locator(".jp-CoiledLab-usagePlot").get_attribute("src")
    assert f"/coiled-lab/api/clusters/{created['id']}/usage/plot" in src, src

    # Idle: "stops soon" arrives as an event, the badge counts it, a click lists it.
    expect(badge).to_have_attribute("data-count", "1", timeout=IDLE_TIMEOUT * 1000)
    expect(badge).to_have_class(re.compile(r"jp-mod-warning"))
    badge.click()
    item = cluster.locator(".jp-CoiledLab-notification")
    expect(item).to_have_count(1)
    expect(item.locator(".jp-CoiledLab-notificationLevel")).to_have_text("warning")
    expect(item.locator(".jp-CoiledLab-notificationMessage")).to_contain_text("the cluster stops in")
    ARTIFACTS.mkdir(exist_ok=True)
    page.locator(SIDEBAR).screenshot(path=ARTIFACTS / "sidebar-notifications-usage.png")

    # The idle timeout then stops it: the card leaves the live list.
    cluster.wait_for(state="detached", timeout=IDLE_TIMEOUT * 1000 + 30_000)
