"""The new-cluster form in a real browser, built from the server's schema
(``GET /coiled-lab/api/schema``): every field the schema lists for a backend is rendered
with its label as the input's accessible name (axe finds no serious violation), the
others are not; -1 workers is an error at the field, kept as typed; on the local backend
a worker bigger than this machine is a warning that does not stop the estimate."""

from __future__ import annotations

import re
from urllib.parse import parse_qs, urlsplit

import pytest
from playwright.sync_api import expect

from .axe import serious_violations
from .test_sidebar import SIDEBAR, field, open_sidebar

pytestmark = [pytest.mark.slow, pytest.mark.timeout(360)]

# A cloud without a cloud: the catalog and the reach hint of AWS, answered in the page.
CATALOG = {
    "backend": "aws",
    "regions": [{"name": "us-east-1", "zones": ["us-east-1a", "us-east-1b"]}],
    "instance_types": [{"name": "m6i.xlarge", "vcpu": 4, "memory": 16 * 2**30, "gpu": 0, "price_per_hour": 0.192}],
}
REACH = {"public_address": "203.0.113.9", "error": None, "echo": "https://echo.example/", "network": None,
         "private_address": None}


def aws_in_the_page(route) -> None:
    request = route.request
    url = urlsplit(request.url)
    backend = parse_qs(url.query).get("backend", [(request.post_data_json or {}).get("backend")])[0]
    if url.path.endswith("/catalog") and backend == "aws":
        route.fulfill(json=CATALOG)
    elif url.path.endswith("/reach"):
        route.fulfill(json=REACH)
    elif url.path.endswith("/estimate") and backend == "aws":
        route.fulfill(status=400, json={"error": "region: no AWS prices in this test", "field": "region"})
    else:
        route.continue_()


def rendered(page, schema: dict) -> None:
    """Each field the schema shows on its backend has its label as its input's name; no other field is there."""
    advanced = page.locator(".jp-CoiledLab-advanced")
    if advanced.get_attribute("open") is None:
        advanced.locator("summary").click()
    for name in schema["x-form"]:
        prop = schema["properties"][name]
        if prop["x-ui"]["sizing"] == "types":
            continue  # shown once workers are sized by instance types (below)
        control = page.locator(".jp-CoiledLab-form").get_by_label(prop["title"], exact=True)
        expect(control).to_be_visible()
        expect(field(page, name)).to_have_count(1)
    for name in set(schema["properties"]) - set(schema["x-form"]):
        expect(field(page, name)).to_have_count(0)
    # No input without a name: each has a <label> of its own (or an aria-label).
    unnamed = page.locator(".jp-CoiledLab-form").evaluate(
        "form => [...form.querySelectorAll('input, select, textarea')]"
        ".filter(e => !(e.labels && e.labels.length) && !e.getAttribute('aria-label')).map(e => e.outerHTML)")
    assert unnamed == []
    assert page.locator(".jp-CoiledLab-form span.jp-CoiledLab-label").count() == 0
    violations = serious_violations(page, ".jp-CoiledLab-form")
    assert violations == [], "\n".join(violations)


def test_the_form_is_built_from_the_servers_schema(page, console, lab, artifacts):
    _, local = lab.api("GET", "coiled-lab/api/schema?backend=local")
    _, aws = lab.api("GET", "coiled-lab/api/schema?backend=aws")
    page.route(re.compile(r"/coiled-lab/api/(catalog|reach|estimate)(\?|$)"), aws_in_the_page)
    open_sidebar(page, lab)
    page.locator(".jp-CoiledLab-newCluster").click()
    form = page.locator(".jp-CoiledLab-form")
    page.locator(".jp-CoiledLab-estimate", has_text="for 4 workers").wait_for()

    # Local: the schema's fields and labels, the server's defaults, the cloud's fields absent.
    rendered(page, local)
    expect(form.get_by_label("Workers", exact=True)).to_have_value(str(local["properties"]["n_workers"]["default"]))
    expect(form.get_by_label("Backend", exact=True).locator("option")).to_have_count(
        len(local["properties"]["backend"]["enum"]))

    # -1 workers: an error at the field naming the bound, the value kept as typed, no estimate.
    workers = form.get_by_label("Workers", exact=True)
    workers.fill("-1")
    error = field(page, "n_workers").locator(".jp-CoiledLab-fieldError")
    expect(error).to_have_text("n_workers: -1 is not allowed: expected at least 0")
    expect(workers).to_have_value("-1")
    expect(workers).to_have_attribute("aria-invalid", "true")
    expect(page.locator(".jp-CoiledLab-estimate.jp-mod-empty")).to_be_visible()
    workers.fill(str(local["properties"]["n_workers"]["maximum"] + 1))
    expect(error).to_contain_text("(coiled-lab.local.max-workers)")
    workers.fill("2")
    error.wait_for(state="detached")

    # Bigger workers than this machine: a warning at each field, and the estimate still comes.
    machine = local["x-machine"]
    form.get_by_label("vCPUs per worker", exact=True).fill(str(machine["cpu"] + 1))
    form.get_by_label("Memory per worker", exact=True).fill(f"{2 * machine['memory'] // 2**30 + 1} GiB")
    expect(field(page, "worker_cpu").locator(".jp-CoiledLab-fieldWarning")).to_have_text(
        f"this machine has {machine['cpu']} vCPUs: workers asking for {machine['cpu'] + 1} will share them")
    expect(field(page, "worker_memory").locator(".jp-CoiledLab-fieldWarning")).to_contain_text("this machine has")
    page.locator(".jp-CoiledLab-estimate:not(.jp-mod-updating)", has_text="$0.00/hour for 2 workers").wait_for()
    expect(form.locator(".jp-CoiledLab-fieldError")).to_have_count(0)
    page.locator(SIDEBAR).screenshot(path=artifacts / "form-local-warnings.png")

    # AWS: its schema's fields appear (the cloud's among them), the local warnings go.
    form.get_by_label("Backend", exact=True).select_option("aws")
    expect(form.get_by_label("Purchase option", exact=True)).to_be_visible()
    rendered(page, aws)
    expect(form.locator(".jp-CoiledLab-fieldWarning")).to_have_count(0)
    expect(form.get_by_label("Region", exact=True).locator("option")).to_have_text(["default", "us-east-1"])
    expect(form.get_by_label("Purchase option", exact=True).locator("option")).to_have_text(
        aws["properties"]["spot_policy"]["enum"])
    # Sized by instance types: the type picker replaces CPU / memory / GPU.
    form.get_by_role("radio", name="instance types").check()
    expect(form.get_by_label(aws["properties"]["worker_vm_types"]["title"], exact=True)).to_be_visible()
    expect(form.get_by_role("checkbox", name=re.compile("^m6i.xlarge"))).to_be_visible()
    expect(field(page, "worker_cpu")).to_have_count(0)
    violations = serious_violations(page, ".jp-CoiledLab-form")
    assert violations == [], "\n".join(violations)
    page.locator(SIDEBAR).screenshot(path=artifacts / "form-aws.png")
