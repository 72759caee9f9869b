"""The lab tells the truth, live (issue 19), against a real ``jupyter lab``, a real local
cluster and a real dask ``Client`` in the test process:

- time left comes from the server: with a client connected the sidebar never warns that
  the cluster stops; once it leaves, the no-client countdown shows at once and the
  warning follows; a client back clears the warning, toast and notice alike;
- the log viewer opens at the newest line and stays there as lines arrive; scrolling up
  pauses following, "Jump to newest" resumes it; counts are pluralized; sources read
  ``scheduler`` and ``worker-…``;
- polish: names whole at the default sidebar width, nothing past the sidebar's edge (a
  cloud's credentials error included), relative times tick, the usage plots follow the
  dark theme, and axe-core finds no serious violation in the sidebar, log viewer and
  credentials panel.
"""

from __future__ import annotations

import re
import time
from typing import Iterator

import pytest
from playwright.sync_api import expect

from coiled_lab.tls import TLSMaterial
from tests.conftest import wait_for

from .axe import serious_violations
from .lab import JupyterLab
from .test_sidebar import SIDEBAR, card, open_sidebar
from .theme import themed_screenshots, use_theme

pytestmark = [pytest.mark.slow, pytest.mark.timeout(420)]

NAME = "lively"
NO_CLIENT = 16  # seconds; the server warns halfway (timeouts shorter than twice its warning)
LOGS = ".jp-CoiledLab-logs"

# Records, from the moment it is installed, whether the page ever warned that a cluster
# stops: a warning badge or a "stops in" toast. A flag, not a sample: nothing is missed.
WATCH_WARNINGS = """() => {
  window.__coiledLabWarned = [];
  const check = () => {
    const badge = document.querySelector('.jp-CoiledLab-notificationBadge.jp-mod-warning');
    const toast = [...document.querySelectorAll('.Toastify__toast')].find(t => t.textContent.includes('stops in'));
    if (badge || toast) {
      window.__coiledLabWarned.push((badge || toast).textContent);
    }
  };
  new MutationObserver(check).observe(document.body, { subtree: true, childList: true, attributes: true,
                                                        characterData: true });
  check();
}"""

# Every element under a selector whose right edge runs past the selector's own.
PAST_THE_EDGE = """(root) => {
  const edge = root.getBoundingClientRect().right + 1;
  return [...root.querySelectorAll('*')]
    .filter(e => e.getClientRects().length && e.getBoundingClientRect().right > edge)
    .map(e => `${e.tagName.toLowerCase()}.${e.className}: ${e.textContent.slice(0, 60)}`);
}"""


@pytest.fixture(scope="module")
def gcp_key_file(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A GCP key file that is not JSON, at a long path with nowhere to break a line: the
    error naming it is the longest word the sidebar shows."""
    path = tmp_path_factory.mktemp("keys") / ("service-account-key-of-the-data-platform-team-" * 3 + "prod.json")
    path.write_text("not json")
    return str(path)


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory, gcp_key_file: str) -> Iterator[JupyterLab]:
    """A lab whose server warns a minute before a timeout stops a cluster, whose log
    viewer asks for new lines every second, and whose GCP key file is unreadable."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("DASK_COILED_LAB__NOTIFICATIONS__SHUTDOWN_WARNING", "1 minute")
        mp.setenv("GOOGLE_APPLICATION_CREDENTIALS", gcp_key_file)
        server = JupyterLab(tmp_path_factory.mktemp("lab-live"),
                            settings={"coiled-lab:logs": {"pageSize": 200, "followInterval": 1}})
        server.start()
    yield server
    server.close()


def connect(lab: JupyterLab, cluster_id: str):
    """A dask Client of the cluster, over TLS with the material the API hands out."""
    from distributed import Client

    code, conn = lab.api("GET", f"coiled-lab/api/clusters/{cluster_id}/connection")
    assert code == 200, conn
    security = TLSMaterial(conn["tls"]["cert"], conn["tls"]["key"]).security()
    return Client(conn["address"], security=security, timeout=30)


def log_on_scheduler(client, marker: str, count: int) -> None:
    """``count`` warning lines in the scheduler's log, numbered after ``marker``."""

    def write(marker: str, count: int) -> None:
        import logging

        for i in range(count):
            logging.getLogger("distributed.scheduler").warning("%s %d", marker, i)

    client.run_on_scheduler(write, marker, count)


def no_gcp(route) -> None:
    request = route.request
    if "backend=gcp" in request.url or (request.post_data_json or {}).get("backend") == "gcp":
        route.fulfill(status=400, json={"error": "backend: no GCP in this test", "field": "backend"})
    else:
        route.continue_()


def at_end(lines) -> bool:
    return lines.evaluate("e => e.scrollHeight - e.scrollTop - e.clientHeight <= 8")


def test_time_left_logs_and_polish(page, console, lab, gcp_key_file):
    code, created = lab.api("POST", "coiled-lab/api/clusters",
                            {"name": NAME, "n_workers": 1, "no_client_timeout": NO_CLIENT})
    assert code == 201, created
    cid = created["id"]
    open_sidebar(page, lab, widen=False)
    cluster = card(page, NAME)
    expect(cluster).to_have_attribute("data-status", "running", timeout=120_000)

    # The name, whole at JupyterLab's default sidebar width, and in full on hover.
    name = cluster.locator(".jp-CoiledLab-name")
    expect(name).to_have_attribute("title", NAME)
    assert name.evaluate("e => e.scrollWidth <= e.clientWidth"), "the cluster's name is cut"
    assert page.locator(SIDEBAR).evaluate(PAST_THE_EDGE) == []
    violations = serious_violations(page, SIDEBAR)
    assert violations == [], "\n".join(violations)

    # A client connected: the sidebar never warns while it stays, past the no-client timeout.
    page.evaluate(WATCH_WARNINGS)
    clock = cluster.locator(".jp-CoiledLab-clock")
    client = connect(lab, cid)
    connected_at = time.monotonic()

    # Meanwhile, the log viewer: it opens at the newest line, following.
    cluster.get_by_role("button", name="Logs").click()
    logs = page.locator(LOGS)
    lines = logs.get_by_role("log", name="log lines")
    follow = logs.get_by_role("checkbox", name="follow")
    logs.locator(".jp-CoiledLab-logLine").first.wait_for(timeout=60_000)
    expect(follow).to_be_checked()
    wait_for(lambda: at_end(lines), what="the log viewer at its newest line")
    themed_screenshots(page, logs, "logs")

    # Lines arriving while following: the newest stays in view after each render.
    log_on_scheduler(client, "first-batch", 80)
    logs.locator(".jp-CoiledLab-logLine", has_text="first-batch 79").wait_for(timeout=30_000)
    assert lines.evaluate("e => e.scrollHeight > e.clientHeight"), "too few lines to scroll"
    assert at_end(lines), "following, yet not at the newest line"
    expect(logs.locator(".jp-CoiledLab-logLine").last).to_be_in_viewport()

    # Scrolling up pauses following; "Jump to newest" resumes it and shows what came.
    lines.hover()
    page.mouse.wheel(0, -2000)
    expect(follow).not_to_be_checked()
    jump = logs.get_by_role("button", name="Jump to newest")
    expect(jump).to_be_visible()
    assert not at_end(lines)
    log_on_scheduler(client, "second-batch", 5)
    jump.click()
    expect(follow).to_be_checked()
    logs.locator(".jp-CoiledLab-logLine", has_text="second-batch 4").wait_for(timeout=30_000)
    assert at_end(lines), "jumped, yet not at the newest line"
    expect(jump).to_have_count(0)

    # Sources: the local scheduler once, workers by instance.
    sources = set(logs.locator(".jp-CoiledLab-logSource").all_inner_texts())
    assert "scheduler" in sources and any(s.startswith("worker-") for s in sources), sources
    assert all(s == "scheduler" or s.startswith("worker-") for s in sources), sources

    # Counts, pluralized.
    count = logs.locator(".jp-CoiledLab-logsCount")
    search = logs.get_by_role("searchbox", name="text")
    search.fill("second-batch 4")
    expect(count).to_have_text("1 line")
    search.fill("second-batch")
    expect(count).to_have_text("5 lines")
    search.fill("")
    violations = serious_violations(page, LOGS)
    assert violations == [], "\n".join(violations)

    # Connected for longer than the no-client timeout: no countdown, no warning, ever.
    page.wait_for_timeout(max(0.0, connected_at + NO_CLIENT + 2 - time.monotonic()) * 1000)
    expect(clock).not_to_contain_text("no client")
    assert page.evaluate("window.__coiledLabWarned") == []
    assert cluster.get_attribute("data-status") == "running"

    # The client leaves: the countdown shows at once, the warning when the server sends it.
    client.close()
    expect(clock).to_contain_text("no client", timeout=5_000)
    badge = cluster.locator(".jp-CoiledLab-notificationBadge")
    expect(badge).to_have_class(re.compile(r"jp-mod-warning"), timeout=NO_CLIENT * 1000)
    toast = page.locator(".Toastify__toast", has_text="stops in")
    expect(toast).to_be_visible()

    # A client back before the end: the warning clears everywhere, the countdown stops.
    client = connect(lab, cid)
    try:
        expect(badge).not_to_have_class(re.compile(r"jp-mod-warning"))
        expect(toast).to_have_count(0)
        expect(clock).not_to_contain_text("no client")
        badge.click()
        expect(cluster.locator(".jp-CoiledLab-notification", has_text="stops in")).to_have_count(0)
        assert cluster.get_attribute("data-status") == "running"

        # The usage plots follow the lab's theme.
        cluster.get_by_role("button", name="Usage").click()
        plot = cluster.locator(".jp-CoiledLab-usagePlot")
        plot.wait_for()
        assert plot.evaluate("e => getComputedStyle(e).filter") == "none"
        use_theme(page, "JupyterLab Dark")
        assert "invert" in plot.evaluate("e => getComputedStyle(e).filter")
        use_theme(page, "JupyterLab Light")
    finally:
        client.close()

    # The credentials panel: every input named; a cloud's error stays inside the sidebar.
    page.keyboard.press("Control+Shift+C")
    page.locator(".lm-CommandPalette-input").fill("Cloud Credentials")
    page.keyboard.press("Enter")
    panel = page.locator(".jp-CoiledLab-credentialsPanel")
    panel.locator('.jp-CoiledLab-provider[data-provider="gcp"]').wait_for()
    violations = serious_violations(page, ".jp-CoiledLab-credentialsPanel")
    assert violations == [], "\n".join(violations)
    expect(panel.get_by_role("textbox", name="Service account key (JSON)")).to_be_visible()
    gcp_error = panel.locator('.jp-CoiledLab-provider[data-provider="gcp"] .jp-CoiledLab-note.jp-mod-warn')
    expect(gcp_error).to_contain_text(gcp_key_file)
    assert panel.evaluate(PAST_THE_EDGE) == []

    # The new-cluster form on GCP: the same error wraps inside the sidebar's default width.
    # Without credentials the server answers GCP's catalog with 503, as it should; the test
    # answers the form's GCP reads itself (this lab has no GCP).
    page.route(re.compile(r"/coiled-lab/api/(catalog|estimate)\b"), no_gcp)
    page.locator(".jp-CoiledLab-newCluster").click()
    form = page.locator(".jp-CoiledLab-form")
    form.locator('[data-field="backend"] select').select_option("gcp")
    expect(form.locator(".jp-CoiledLab-note.jp-mod-warn", has_text="No credentials")).to_contain_text(gcp_key_file)
    assert page.locator(SIDEBAR).evaluate(PAST_THE_EDGE) == []
    violations = serious_violations(page, ".jp-CoiledLab-form")
    assert violations == [], "\n".join(violations)
    form.locator('[data-field="backend"] select').select_option("local")
    page.locator(".jp-CoiledLab-newCluster").click()

    # Stopped: in the history, its "ago" ticks as time passes.
    code, _ = lab.api("DELETE", f"coiled-lab/api/clusters/{cid}")
    assert code in (200, 202)
    cluster.wait_for(state="detached", timeout=60_000)
    page.locator(".jp-CoiledLab-history summary").click()
    age = page.locator(".jp-CoiledLab-historyRow", has_text=NAME).locator(".jp-CoiledLab-historyAge")
    expect(age).to_have_text(re.compile(r"^\d+s ago$"))
    first = age.inner_text()
    expect(age).not_to_have_text(first)
    expect(age).to_have_text(re.compile(r"^\d+s ago$"))
    assert page.locator(SIDEBAR).evaluate(PAST_THE_EDGE) == []
