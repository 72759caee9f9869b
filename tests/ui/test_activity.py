"""The activity log (issue 21) in a real lab: an admin (in single-user mode, the server's own
user) opens it from the sidebar and sees who created, scaled and stopped which cluster,
at what estimated cost, and which request a limit refused; rows written later arrive
without a reload. Checked with axe-core, and screenshotted for the README."""

from __future__ import annotations

import os
from typing import Iterator

import pytest
from playwright.sync_api import expect

from tests.conftest import wait_for

from .axe import serious_violations
from .conftest import docs_screenshot
from .lab import JupyterLab, installed_labextension
from .test_sidebar import SIDEBAR, open_sidebar

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]

PANEL = ".jp-CoiledLab-activityPanel"
LIMIT = "DASK_COILED_LAB__LIMITS__MAX_WORKERS"


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[JupyterLab]:
    """A lab whose admin allows at most 2 workers a cluster (so a refusal is recorded)."""
    if installed_labextension() is None:
        pytest.fail("the coiled-lab lab extension is not installed; build it with `pip install -e .`")
    server = JupyterLab(tmp_path_factory.mktemp("lab"))
    before = os.environ.get(LIMIT)
    os.environ[LIMIT] = "2"  # the server inherits it
    try:
        server.start()
    finally:
        os.environ.pop(LIMIT) if before is None else os.environ.__setitem__(LIMIT, before)
    yield server
    server.close()


def rows(page):
    return page.locator(f"{PANEL} .jp-CoiledLab-activityRow")


def test_an_admin_sees_who_did_what(page, console, lab, artifacts):
    code, me = lab.api("GET", "coiled-lab/api/me")
    assert code == 200 and me["admin"] is True and me["team"] is False, me
    code, record = lab.api("POST", "coiled-lab/api/clusters", {"name": "audited", "n_workers": 1})
    assert code == 201, record
    cluster = f"coiled-lab/api/clusters/{record['id']}"
    wait_for(lambda: lab.api("GET", cluster)[1]["status"] == "running", timeout=60, what="the cluster running")
    assert lab.api("PATCH", cluster, {"n_workers": 2})[0] == 200
    code, refused = lab.api("POST", "coiled-lab/api/clusters", {"name": "too-big", "n_workers": 3})
    assert 400 <= code < 500, refused

    open_sidebar(page, lab)
    page.locator(SIDEBAR).get_by_role("button", name="Activity").click()
    expect(rows(page)).to_have_count(3)
    newest, scale, create = (rows(page).nth(i) for i in range(3))
    for row in (newest, scale, create):
        expect(row.locator("td").nth(1)).to_have_text(me["name"])
    expect(newest.locator("td").nth(2)).to_have_text("refused")
    expect(newest.locator("td").nth(5)).to_contain_text("max-workers")
    expect(scale.locator("td").nth(2)).to_have_text("scale")
    expect(create.locator("td").nth(2)).to_have_text("create")
    expect(create.locator("td").nth(3)).to_have_text("audited")

    # A stop made elsewhere (the API, as a kernel would) shows up live.
    assert lab.api("DELETE", cluster)[0] == 202
    expect(rows(page)).to_have_count(4, timeout=20_000)
    expect(rows(page).first.locator("td").nth(2)).to_have_text("stop")

    assert serious_violations(page, PANEL) == []
    docs_screenshot(page.locator(PANEL), "activity.png")

    # Filtering by cluster leaves the refusal of another out.
    panel = page.locator(PANEL)
    panel.get_by_label("Cluster", exact=True).fill("audited")
    panel.get_by_role("button", name="Show").click()
    expect(rows(page)).to_have_count(3)
