"""The notebook widgets in a real browser against a real ``jupyter lab`` (local backend):
``ClusterForm`` renders through JupyterLab's ipywidgets manager, its Create button starts a
cluster, and the live cluster widget under it follows the cluster to running and stops it.
Everything is read from the rendered DOM, as a user sees it."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest
from playwright.sync_api import expect

from tests.conftest import wait_for

from .notebook import open_new_notebook, run_cell

pytestmark = [pytest.mark.slow, pytest.mark.timeout(240)]


def test_widgets_manager_is_installed():
    """Without JupyterLab's ipywidgets manager a widget shows as plain text, not a form."""
    listed = subprocess.run([sys.executable, "-m", "jupyter", "labextension", "list"], capture_output=True,
                            text=True, check=True)
    assert "@jupyter-widgets/jupyterlab-manager" in listed.stdout + listed.stderr


def test_cluster_form_creates_and_stops_a_cluster(page, console, lab, artifacts):
    notebook = open_new_notebook(page, lab)
    cell = run_cell(page, notebook, "from coiled_lab import ClusterForm; form = ClusterForm(n_workers=1); form")

    # The form renders as widgets (not "Loading widget..." or a text repr), with the
    # defaults it was given and the server's estimate for them.
    form = cell.locator(".jp-OutputArea-output > .widget-vbox")
    form.wait_for()
    expect(form.locator(".widget-text", has_text="workers").locator("input").first).to_have_value("1")
    expect(form.locator(".widget-dropdown", has_text="backend").locator("select")).to_have_value("local")
    estimate = form.locator(".widget-html-content", has_text="/hour")
    expect(estimate).to_contain_text("$0.00/hour for 1 workers")
    create = form.get_by_role("button", name="Create cluster")
    expect(create).to_be_enabled()
    form.screenshot(path=artifacts / "widget-form.png")

    # Create: the live cluster widget appears under the form and follows the cluster.
    create.click()
    widget = form.locator(".widget-vbox", has=page.get_by_role("button", name="Stop")).last
    widget.wait_for()
    badge = widget.locator(".widget-html-content span").first
    counts = widget.get_by_text("1/1 ready", exact=True)
    counts.wait_for(timeout=90_000)
    expect(badge).to_have_text("running", timeout=30_000)
    bar = widget.locator(".widget-hprogress .progress-bar")
    expect(bar).to_have_class("progress-bar progress-bar-success")
    expect(bar).to_have_attribute("style", re.compile(r"(^|; )width: 100%;"))  # 1 of 1
    expect(widget.locator(".widget-html-content", has_text="so far")).to_contain_text("$0.00/hour · $0.00 so far")
    name = widget.locator(".widget-html-content b").first.inner_text()
    link = widget.get_by_role("link", name="dashboard")
    assert "/coiled-lab/clusters/" in link.get_attribute("href")

    # The browser's click started a real cluster on the server: running, one worker.
    code, reply = lab.api("GET", "coiled-lab/api/clusters?live=true")
    assert code == 200, reply
    [record] = [c for c in reply["clusters"] if c["name"] == name]
    assert record["status"] == "running" and record["workers"]["ready"] == 1, record
    assert lab.cluster_processes()

    # The logs pane tails the cluster's log.
    logs = widget.locator("textarea")
    wait_for(lambda: "scheduler" in logs.input_value(), timeout=60, what="scheduler lines in the logs pane")
    widget.screenshot(path=artifacts / "widget-running.png")

    # Stop from the widget: it shows stopped, its controls are off, no dask process is left.
    widget.get_by_role("button", name="Stop").click()
    expect(badge).to_have_text("stopped", timeout=90_000)
    expect(widget.get_by_role("button", name="Stop")).to_be_disabled()
    expect(widget.get_by_role("button", name="Scale")).to_be_disabled()
    wait_for(lambda: not lab.cluster_processes(), timeout=60, what="no dask process of the test's state dir left")
    # The logs pane stops following once the cluster's last lines are out.
    expect(widget.get_by_role("checkbox", name="follow logs")).not_to_be_checked(timeout=30_000)
    widget.screenshot(path=artifacts / "widget-stopped.png")
