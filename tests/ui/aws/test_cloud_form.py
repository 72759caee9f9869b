"""The new-cluster form's cloud parts in a real browser, against "AWS" (moto, the Price List
endpoint, the EC2 emulator): backend, credentials and the link that fixes them, region and
zone from /catalog, a searched and picked instance type with its size and price, the live
estimate at cloud prices as workers and spot change, the admin's limits refused at their
field, and a created cluster that runs on emulated EC2 instances, shows its workers and
$/hour in the sidebar, has CloudWatch logs and stops leaving nothing tagged."""

from __future__ import annotations

import re

import pytest
from playwright.sync_api import expect

from tests.aws.conftest import REGION
from tests.conftest import wait_for
from tests.pricelist import ON_DEMAND

from ..test_sidebar import SIDEBAR, card, field, open_sidebar
from .conftest import MAX_WORKERS

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]

ZONE = f"{REGION}b"
WORKER_TYPE = "m6i.large"  # priced by the local Price List endpoint, allowed by the limits
SCHEDULER_TYPE = "m6i.large"  # coiled-lab.aws.scheduler-vm-type
DEFAULT_WORKER_TYPE = "m6i.xlarge"  # the first of coiled-lab.aws.worker-vm-types


def settled(page, text: str) -> str:
    """The estimate once it answers for the fields as they are (no newer one on its way)."""
    estimate = page.locator(".jp-CoiledLab-estimate:not(.jp-mod-updating):not(.jp-mod-empty)", has_text=text)
    estimate.wait_for()
    return estimate.inner_text()


def dollars(text: str) -> float:
    """The first "$x/hour" of the estimate."""
    return float(re.search(r"\$([0-9.]+)/hour", text).group(1))


def test_cloud_cluster_from_the_form(page, console, lab, moto, artifacts, vm_network):
    open_sidebar(page, lab)
    page.locator(".jp-CoiledLab-newCluster").click()
    form = page.locator(".jp-CoiledLab-form")
    field(page, "name").locator("input").fill("ui-aws")

    # Backend AWS: the server's credentials (environment) are shown, with a link to change them.
    field(page, "backend").locator("select").select_option("aws")
    note = form.locator(".jp-CoiledLab-note", has_text="Credentials from environment")
    expect(note).to_contain_text(REGION)
    note.get_by_role("button", name="change").click()
    page.locator('.jp-CoiledLab-provider[data-provider="aws"]').wait_for()
    page.locator(".lm-DockPanel-tabBar .lm-TabBar-tab.lm-mod-current .lm-TabBar-tabCloseIcon").click()
    page.locator('.jp-CoiledLab-provider[data-provider="aws"]').wait_for(state="detached")

    # Region and zone from /catalog (moto's zones of the region).
    region = field(page, "region").locator("select")
    expect(region.locator(f'option[value="{REGION}"]')).to_have_count(1, timeout=60_000)
    region.select_option(REGION)
    zone = field(page, "zone").locator("select")
    expect(zone.locator("option")).to_have_count(7, timeout=60_000)  # "any" and moto's six zones
    zone.select_option(ZONE)

    # Who the scheduler's ports open to: "me", this server as the emulated internet sees it.
    expect(field(page, "allow_ingress_from").locator(".jp-CoiledLab-hint")).to_contain_text(
        f"me: {vm_network.egress_address}, as ")

    # The default estimate is priced from the Price List API: scheduler + 4 default-type workers
    # (coiled-lab.aws.worker-vm-types), plus their disks (a few tenths of a cent an hour).
    text = settled(page, "for 4 workers")
    machines = ON_DEMAND[(REGION, SCHEDULER_TYPE)] + 4 * ON_DEMAND[(REGION, DEFAULT_WORKER_TYPE)]
    assert machines <= dollars(text) < machines + 0.01, text

    # Workers by size: a bad value is refused at its field by the estimate.
    cpu = field(page, "worker_cpu").locator("input")
    cpu.fill("two")
    expect(field(page, "worker_cpu").locator(".jp-CoiledLab-fieldError")).to_contain_text("worker_cpu")
    expect(page.locator(".jp-CoiledLab-estimate")).to_have_class(re.compile(r"jp-mod-empty"))
    cpu.fill("")
    settled(page, "for 4 workers")

    # Workers by instance type: search, see sizes (GPUs too) and spot prices, pick one.
    form.get_by_role("radio", name="instance types").check()
    types = field(page, "worker_vm_types")
    search = types.locator('input[type="search"]')
    expect(search).to_have_attribute("placeholder", re.compile(r"search \d{3,} types"))
    search.fill("g4dn.xl")
    expect(types.locator("li", has_text="g4dn.xlarge").locator(".jp-CoiledLab-typeSpec")).to_have_text(
        re.compile(r"^4 vCPU · 16 GiB · 1 GPU · spot \$[0-9.e-]+/h$"))
    search.fill("m6i.la")
    row = types.locator("li", has_text=WORKER_TYPE)
    expect(row).to_have_count(1)
    expect(row.locator(".jp-CoiledLab-typeSpec")).to_have_text(re.compile(r"^2 vCPU · 8\.0 GiB · spot \$[0-9.e-]+/h$"))
    row.locator('input[type="checkbox"]').check()
    search.fill("")
    workers = field(page, "n_workers").locator("input")
    workers.fill("2")
    on_demand = ON_DEMAND[(REGION, WORKER_TYPE)]
    text = settled(page, "for 2 workers")
    priced = dollars(text)
    machines = ON_DEMAND[(REGION, SCHEDULER_TYPE)] + 2 * on_demand
    assert machines <= priced < machines + 0.01, text
    assert f"workers {WORKER_TYPE} at ${on_demand:.3f}/h each" in text, text
    workers.fill("3")
    assert dollars(settled(page, "for 3 workers")) == pytest.approx(priced + on_demand, abs=0.002)

    # Spot: cheaper workers (moto's spot price history), the saving shown.
    spot = field(page, "spot_policy").locator("select")
    spot.select_option("spot")
    assert dollars(settled(page, "spot saves")) < priced
    spot.select_option("on-demand")
    assert "spot saves" not in settled(page, "for 3 workers")
    page.screenshot(path=artifacts / "form-aws.png")

    # The admin's limits: the form knows them from the served schema, so the field says so as
    # it is typed (no estimate is asked for), and Create is refused the same way; no instance made.
    workers.fill(str(MAX_WORKERS + 1))
    error = field(page, "n_workers").locator(".jp-CoiledLab-fieldError")
    expect(error).to_contain_text(f"at most {MAX_WORKERS}")
    expect(error).to_contain_text("max-workers")
    expect(page.locator(".jp-CoiledLab-estimate")).to_have_class(re.compile(r"jp-mod-empty"))
    page.locator(".jp-CoiledLab-create").click()
    expect(error).to_contain_text("max-workers")
    workers.fill("2")
    error.wait_for(state="detached")
    search.fill("c6i.xlarge")
    # Create at once: the estimate this choice starts, answered after, leaves Create's error be.
    types.locator("li", has_text="c6i.xlarge").first.locator('input[type="checkbox"]').check()
    page.locator(".jp-CoiledLab-create").click()
    refused = types.locator(".jp-CoiledLab-fieldError")
    expect(refused).to_contain_text("'c6i.xlarge' is not allowed")
    expect(refused).to_contain_text("m6i.*")
    settled(page, "for 2 workers")
    expect(refused).to_contain_text("'c6i.xlarge' is not allowed")
    page.screenshot(path=artifacts / "form-aws-refused.png")
    types.locator("li", has_text="c6i.xlarge").first.locator('input[type="checkbox"]').uncheck()
    refused.wait_for(state="detached")
    settled(page, "for 2 workers")
    assert not card(page, "ui-aws").count()

    # Create: the stepper walks to running on emulated EC2 instances.
    page.locator(".jp-CoiledLab-create").click()
    cluster = card(page, "ui-aws")
    cluster.wait_for()
    cluster.locator(".jp-CoiledLab-stepper").wait_for()
    cluster.locator('[data-step="running"].jp-mod-done').wait_for(timeout=120_000)
    expect(cluster).to_have_attribute("data-status", "running")
    expect(cluster.locator(".jp-CoiledLab-workers")).to_have_text("2/2 workers")
    expect(cluster.locator(".jp-CoiledLab-meta")).to_have_text(f"aws · {REGION} / {ZONE}")
    expect(cluster.locator(".jp-CoiledLab-cost")).to_contain_text("/h")
    per_hour = float(re.search(r"\$([0-9.]+)/h", cluster.locator(".jp-CoiledLab-cost").inner_text()).group(1))
    assert per_hour == pytest.approx(ON_DEMAND[(REGION, SCHEDULER_TYPE)] + 2 * on_demand, abs=0.01)
    cluster_id = cluster.get_attribute("data-cluster-id")
    instances = moto.instances(cluster_id)
    assert sorted(i["InstanceType"] for i in instances) == [SCHEDULER_TYPE, WORKER_TYPE, WORKER_TYPE]
    assert {i["Placement"]["AvailabilityZone"] for i in instances} == {ZONE}
    docs_free = page.locator(SIDEBAR)
    docs_free.screenshot(path=artifacts / "sidebar-aws.png")

    # Logs: the workers' lines, from CloudWatch Logs.
    cluster.get_by_role("button", name="Logs").click()
    logs = page.locator(".jp-CoiledLab-logs")
    logs.locator('.jp-CoiledLab-logLine[data-role="worker"]').first.wait_for(timeout=60_000)
    wait_for(lambda: len(set(logs.locator('.jp-CoiledLab-logLine[data-role="worker"] .jp-CoiledLab-logSource')
                             .all_inner_texts())) == 2, timeout=60, what="lines of both workers")
    page.screenshot(path=artifacts / "logs-aws.png")

    # Stop: the card goes, nothing tagged with the cluster is left in "EC2".
    cluster.get_by_role("button", name="Stop").click()
    page.locator(".jp-Dialog button.jp-mod-warn").click()
    cluster.wait_for(state="detached", timeout=120_000)
    wait_for(lambda: not moto.tagged(cluster_id), timeout=60, what=f"nothing tagged with {cluster_id}")
