"""The lab extension in a real browser against a real ``jupyter lab`` (local backend):
a cluster's whole life from the sidebar, the sidebar across a server restart, and the
form taking a cloud cluster's packages from a notebook's kernel."""

from __future__ import annotations

import json
import re
from urllib.parse import urlsplit

import pytest
from playwright.sync_api import expect

from tests.conftest import wait_for

from .notebook import run_cell, wait_idle
from .theme import themed_screenshots, use_theme

pytestmark = [pytest.mark.slow, pytest.mark.timeout(360)]

SIDEBAR = ".jp-CoiledLab-panel"


def open_sidebar(page, lab, goto: bool = True, widen: bool = True) -> None:
    """The sidebar, in a freshly loaded lab (``goto``) or in the page as it is; dragged
    wider (``widen``) or at JupyterLab's default width."""
    if goto:
        page.goto(lab.lab_url)
    page.locator('.lm-TabBar-tab[data-id="coiled-lab-sidebar"]').click()
    page.locator(SIDEBAR).wait_for()
    page.locator(".jp-CoiledLab-connection.jp-mod-connected").wait_for()
    if not widen:
        return
    # A wider sidebar than JupyterLab's default, as a user running clusters would drag it.
    handle = page.locator("#jp-main-split-panel > .lm-SplitPanel-handle").first.bounding_box()
    x, y = handle["x"] + handle["width"] / 2, handle["y"] + handle["height"] / 2
    page.mouse.move(x, y)
    page.mouse.down()
    page.mouse.move(x + 80, y, steps=4)
    page.mouse.up()


def card(page, name: str):
    return page.locator(f'.jp-CoiledLab-clusters [data-cluster-name="{name}"]')


def field(page, name: str):
    return page.locator(f'.jp-CoiledLab-form [data-field="{name}"]')


def test_cluster_life_from_the_sidebar(page, console, lab, artifacts):
    open_sidebar(page, lab)
    page.locator(".jp-CoiledLab-empty").wait_for()
    page.screenshot(path=artifacts / "sidebar-empty.png")

    # The form: server defaults shown, the estimate follows the fields.
    page.locator(".jp-CoiledLab-newCluster").click()
    workers = field(page, "n_workers").locator("input")
    expect(workers).to_have_value("4")  # the server's dask config
    page.locator(".jp-CoiledLab-estimate", has_text="for 4 workers").wait_for()
    field(page, "name").locator("input").fill("ui-test")
    workers.fill("2")
    page.locator(".jp-CoiledLab-estimate", has_text="$0.00/hour for 2 workers").wait_for()

    # Invalid values: the server's message appears at the field it names, and goes once fixed.
    workers.fill("500")
    error = field(page, "n_workers").locator(".jp-CoiledLab-fieldError")
    error.wait_for()
    assert "at most 64" in error.inner_text()
    assert page.locator(".jp-CoiledLab-estimate.jp-mod-empty").is_visible()
    workers.fill("2")
    error.wait_for(state="detached")
    idle = field(page, "idle_timeout").locator("input")
    idle.fill("whenever")
    field(page, "idle_timeout").locator(".jp-CoiledLab-fieldError", has_text="idle_timeout").wait_for()
    idle.fill("30m")
    page.locator(".jp-CoiledLab-estimate", has_text="for 2 workers").wait_for()
    page.screenshot(path=artifacts / "form.png")

    # Create: the stepper walks network -> scheduler -> workers -> running.
    page.locator(".jp-CoiledLab-create").click()
    cluster = card(page, "ui-test")
    cluster.wait_for()
    assert not page.locator(".jp-CoiledLab-form").is_visible()
    cluster.locator(".jp-CoiledLab-stepper").wait_for()
    page.screenshot(path=artifacts / "progress.png")
    cluster.locator('[data-step="running"].jp-mod-done').wait_for(timeout=120_000)
    assert cluster.get_attribute("data-status") == "running"
    assert cluster.locator(".jp-CoiledLab-workers").inner_text() == "2/2 workers"
    steps = cluster.locator(".jp-CoiledLab-step.jp-mod-done").count()
    assert steps == 4, steps

    # For the README, light and dark: a running cluster and the form (with its estimate) for the next one.
    page.locator(".jp-CoiledLab-newCluster").click()
    page.locator(".jp-CoiledLab-estimate", has_text="for 2 workers").wait_for()
    themed_screenshots(page, page.locator(SIDEBAR), "sidebar")
    page.locator(".jp-CoiledLab-newCluster").click()

    # The dashboard in a lab tab, through the server's proxy: bokeh's status page renders.
    cluster.get_by_role("button", name="Dashboard").click()
    frame = page.frame_locator(".jp-CoiledLab-dashboard iframe")
    frame.locator("canvas").first.wait_for(timeout=60_000)
    src = page.locator(".jp-CoiledLab-dashboard iframe").get_attribute("src")
    assert "/coiled-lab/clusters/" in src and src.endswith("/dashboard/status"), src
    page.screenshot(path=artifacts / "dashboard.png")

    # The log viewer: worker lines, a page of 20 (the test's setting), older lines on demand,
    # filters, copy.
    cluster.get_by_role("button", name="Logs").click()
    logs = page.locator(".jp-CoiledLab-logs")
    logs.locator('.jp-CoiledLab-logLine[data-role="worker"]').first.wait_for(timeout=60_000)
    older = logs.locator(".jp-CoiledLab-older")
    older.wait_for()
    older.click()
    wait_for(lambda: logs.locator(".jp-CoiledLab-logLine").count() > 20, what="older lines")
    page.screenshot(path=artifacts / "logs.png")
    logs.locator('select[aria-label="instance"]').select_option("worker")
    wait_for(lambda: logs.locator('.jp-CoiledLab-logLine[data-role="scheduler"]').count() == 0
             and logs.locator('.jp-CoiledLab-logLine[data-role="worker"]').count() > 0, what="worker lines only")
    logs.get_by_role("button", name="Copy").click()
    copied = page.evaluate("navigator.clipboard.readText()")
    assert "worker-" in copied and "scheduler-" not in copied

    # Scale to 3 from the card; the followed log shows the third worker.
    scale = cluster.locator(".jp-CoiledLab-scale")
    scale.locator("input").fill("3")
    scale.get_by_role("button", name="Scale").click()
    wait_for(lambda: cluster.locator(".jp-CoiledLab-workers").inner_text() == "3/3 workers"
             and cluster.get_attribute("data-status") == "running", timeout=120, what="3 workers")

    def worker_sources() -> set[str]:
        return set(logs.locator(".jp-CoiledLab-logSource").all_inner_texts())

    wait_for(lambda: len(worker_sources()) >= 3, timeout=60, what="lines of a third worker")

    # Client code into a notebook.
    page.locator(".lm-DockPanel-tabBar .lm-TabBar-tab", has_text="Launcher").click()
    page.locator('.jp-LauncherCard[data-category="Notebook"]').first.click()
    page.locator(".jp-NotebookPanel").wait_for()
    cluster.get_by_role("button", name="Insert client").click()
    page.locator(".jp-NotebookPanel .jp-Cell", has_text='Cluster(name="ui-test", shutdown_on_close=False)').wait_for()

    # Stop (confirmed): the card goes, the cluster is in the history, no process is left.
    cluster.get_by_role("button", name="Stop").click()
    page.locator(".jp-Dialog button.jp-mod-warn").click()
    cluster.wait_for(state="detached", timeout=120_000)
    page.locator(".jp-CoiledLab-history summary").click()
    row = page.locator(".jp-CoiledLab-historyRow", has_text="ui-test")
    assert row.locator(".jp-CoiledLab-badge").inner_text() == "stopped"
    wait_for(lambda: not lab.cluster_processes(), timeout=60, what="no dask process left")


def test_sidebar_reconnects_after_server_restart(page, console, lab, artifacts):
    code, created = lab.api("POST", "coiled-lab/api/clusters", {"name": "survivor", "n_workers": 1})
    assert code == 201, created
    open_sidebar(page, lab)
    cluster = card(page, "survivor")
    expect(cluster).to_have_attribute("data-status", "running", timeout=120_000)

    with console.server_down():
        lab.kill()
        page.locator(".jp-CoiledLab-connection.jp-mod-reconnecting").wait_for()
        lab.start()
        page.locator(".jp-CoiledLab-connection.jp-mod-connected").wait_for(timeout=60_000)
    # JupyterLab's own modal may have come up while the server was down (a slow restart): close it.
    lost = page.locator(".jp-Dialog", has_text="Server Connection Error")
    if lost.count():
        lost.get_by_role("button", name="Close").click()
        lost.wait_for(state="detached")
    assert cluster.get_attribute("data-status") == "running"
    page.screenshot(path=artifacts / "reconnected.png")

    # The credentials panel (from the palette): status only; what is written is never shown.
    secret = "uiTestSecret/0123456789abcdefghijklmnopqrstuvwxyz"
    page.keyboard.press("Control+Shift+C")
    page.locator(".lm-CommandPalette-input").fill("Cloud Credentials")
    page.keyboard.press("Enter")
    aws = page.locator('.jp-CoiledLab-provider[data-provider="aws"]')
    aws.locator('[data-field="access_key_id"] input').fill("not a key")
    aws.locator('[data-field="secret_access_key"] input').fill(secret)
    aws.get_by_role("button", name="Save").click()
    aws.locator('[data-field="access_key_id"] .jp-CoiledLab-fieldError').wait_for()
    aws.locator('[data-field="access_key_id"] input').fill("AKIAUITESTKEY0001234")
    aws.get_by_role("button", name="Save").click()
    aws.locator(".jp-CoiledLab-saved").wait_for()
    expect(aws.locator(".jp-CoiledLab-status")).to_contain_text("…1234")
    expect(aws.locator('[data-field="secret_access_key"] input')).to_have_value("")
    assert secret not in page.content()
    page.screenshot(path=artifacts / "credentials.png")
    aws.get_by_role("button", name="Forget stored").click()
    expect(aws).not_to_contain_text("…1234")

    # Theme variables all the way: the dark theme applies as it is.
    use_theme(page, "JupyterLab Dark")
    page.locator(SIDEBAR).screenshot(path=artifacts / "reconnected-dark.png")
    use_theme(page, "JupyterLab Light")

    # The restarted server takes the page's requests (cookie and XSRF still valid).
    scale = cluster.locator(".jp-CoiledLab-scale")
    scale.locator("input").fill("2")
    scale.get_by_role("button", name="Scale").click()
    wait_for(lambda: cluster.locator(".jp-CoiledLab-workers").inner_text() == "2/2 workers"
             and cluster.get_attribute("data-status") == "running", timeout=120, what="2 workers")
    cluster.get_by_role("button", name="Stop").click()
    page.locator(".jp-Dialog button.jp-mod-warn").click()
    cluster.wait_for(state="detached", timeout=120_000)


def test_form_takes_packages_from_the_notebook_kernel(page, console, lab, artifacts):
    """A cloud cluster's packages: the server's with no notebook open, then the new
    notebook's kernel, which sends its environment on Create (the request names it by
    hash); a kernel without coiled-lab is refused with the fix; the server's on request.
    This lab has no AWS (its server would answer 503): the test answers what asks AWS,
    Create included; the request is what counts."""
    created: list[dict] = []

    def is_create(request) -> bool:
        return request.method == "POST" and urlsplit(request.url).path.endswith("/coiled-lab/api/clusters")

    def no_aws(route):
        request = route.request
        if is_create(request):
            created.append(request.post_data_json)
            route.fulfill(status=400, json={"error": "refused by the test", "field": None})
        elif "backend=aws" in urlsplit(request.url).query or (request.post_data_json or {}).get("backend") == "aws":
            route.fulfill(status=400, json={"error": "backend: no AWS in this test", "field": "backend"})
        else:
            route.continue_()

    page.route(re.compile(r"/coiled-lab/api/(clusters|catalog|estimate)(\?|$)"), no_aws)
    open_sidebar(page, lab)
    page.locator(".jp-CoiledLab-newCluster").click()
    software = page.get_by_role("group", name="software of the workers")
    line = software.locator(".jp-CoiledLab-softwareText")
    expect(software).to_have_count(0)  # the local backend runs the server's processes
    field(page, "backend").locator("select").select_option("aws")
    expect(line).to_have_text("software: the Jupyter server's environment (no notebook kernel)")
    expect(software.get_by_role("combobox")).to_have_count(0)

    # A notebook opens: its kernel is the one the form names, with the server's as the other choice.
    page.locator('.jp-LauncherCard[data-category="Notebook"]').first.click()
    notebook = page.locator(".jp-NotebookPanel").last
    notebook.wait_for()
    wait_idle(page, timeout=60_000)
    kernel = "Python 3 (ipykernel)"
    expect(line).to_have_text(f"software: from {kernel}")
    picker = software.get_by_role("combobox", name="take the packages from")
    expect(picker.locator("option")).to_have_text([re.compile(rf"^Untitled\d*\.ipynb: {re.escape(kernel)}$"),
                                                   "the Jupyter server's environment"])

    # A kernel without coiled-lab: Create says so and how to fix it, and creates nothing.
    run_cell(page, notebook, 'import sys; hidden = {k: sys.modules.pop(k, None) for k in ("coiled_lab", '
                             '"coiled_lab.environment")}; sys.modules.update(dict.fromkeys(hidden))')
    error = software.locator(".jp-CoiledLab-fieldError")
    no_coiled_lab = f"the kernel '{kernel}' has no coiled-lab: pip install coiled-lab in it, or pick the server's environment"
    software.get_by_role("button", name=f"check the packages of {kernel}").click()
    expect(error).to_have_text(no_coiled_lab, timeout=60_000)
    page.locator(".jp-CoiledLab-create").click()
    expect(page.locator(".jp-CoiledLab-create")).to_have_text("Create cluster", timeout=60_000)
    expect(error).to_have_text(no_coiled_lab)
    expect(line).to_have_text(f"software: from {kernel}")
    assert created == []
    page.screenshot(path=artifacts / "form-software-error.png")

    # With coiled-lab back: Create has the kernel send its environment, then names it by hash.
    run_cell(page, notebook, "[sys.modules.pop(k) for k in hidden]; "
                             "sys.modules.update({k: m for k, m in hidden.items() if m})")
    with page.expect_request(is_create, timeout=120_000):
        page.locator(".jp-CoiledLab-create").click()
    expect(page.locator(".jp-CoiledLab-formError")).to_have_text("refused by the test")
    error.wait_for(state="detached")
    assert len(created) == 1, created
    body = created[0]
    assert body["backend"] == "aws", body
    assert re.fullmatch(r"[0-9a-f]{32}", body.get("environment", "")), body
    kept = json.loads((lab.state_dir / "environments" / f"{body['environment']}.json").read_text())
    assert kept["where"].startswith("the kernel ("), kept["where"]
    expect(line).to_have_text(re.compile(rf"^software: synced from {re.escape(kernel)} \((\d+) packages, \d+ local\)$"))
    packages = int(re.search(r"\((\d+) packages", line.inner_text()).group(1))
    assert packages == len(kept["packages"]), (packages, len(kept["packages"]))
    assert body["environment"] in line.get_attribute("title")
    page.locator(SIDEBAR).screenshot(path=artifacts / "form-software.png")

    # The server's environment, picked: Create sends none (the server syncs its own and says so).
    picker.select_option(label="the Jupyter server's environment")
    expect(line).to_have_text("software: the Jupyter server's environment")
    with page.expect_request(is_create):
        page.locator(".jp-CoiledLab-create").click()
    expect(page.locator(".jp-CoiledLab-create")).to_have_text("Create cluster")
    assert len(created) == 2 and "environment" not in created[1], created
