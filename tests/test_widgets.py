"""The notebook widgets, driven by real clusters and the control plane's events."""

from __future__ import annotations

import pytest

from .conftest import cluster_processes, wait_for

pytestmark = pytest.mark.slow


def test_cluster_widget_follows_events_and_acts(control, state_dir):
    from coiled_lab.widgets import ClusterWidget

    record = control.run(control.create({"n_workers": 1, "name": "widgeted"}))
    widget = ClusterWidget(record["id"], control)
    try:
        wait_for(lambda: widget.state()["status"] == "running", timeout=60, what="widget shows running")
        assert widget.state()["counts"] == "1/1 ready" and widget.progress.bar_style == "success"
        assert "$0.00/hour" in widget.cost.value
        assert "idle" in widget.stops.value
        assert 'href="http://127.0.0.1:' in widget.dashboard.value
        wait_for(lambda: "distributed.scheduler" in widget.logs.value, what="log lines in the widget")

        widget.scale_to.value = 2
        widget.scale_button.click()
        wait_for(lambda: widget.state()["counts"] == "2/2 ready", timeout=60, what="scaled in the widget")

        widget.stop_button.click()
        wait_for(lambda: widget.state()["status"] == "stopped", timeout=60, what="stopped in the widget")
        assert widget.stop_button.disabled and widget.scale_button.disabled
        wait_for(lambda: not cluster_processes(state_dir), timeout=15, what="no process left")
    finally:
        widget.close()


def test_form_estimates_validates_at_the_field_and_creates(control, state_dir):
    from coiled_lab.widgets import ClusterForm

    form = ClusterForm(control=control)
    wait_for(lambda: "$0.00/hour" in form.estimate.value, what="an estimate")

    form.fields["n_workers"].value = 500  # over the local ceiling the schema carries
    assert form.submit() is None
    assert "expected at most 64 (coiled-lab.local.max-workers)" in form.errors["n_workers"].value
    form.fields["n_workers"].value = 1
    form.fields["idle_timeout"].value = "whenever"  # the server's validation, at its field
    form.submit()
    wait_for(lambda: "idle_timeout" in form.errors["idle_timeout"].value, what="the server's error at its field")
    assert control.run(control.list()) == []

    form.fields["idle_timeout"].value = "30m"
    form.fields["tags"].value = "team"
    assert form.submit() is None and "KEY=VALUE" in form.errors["tags"].value

    form.fields["tags"].value = "team=geo"
    form.fields["name"].value = "from-form"
    form.submit()
    wait_for(lambda: form.widget is not None, what="the cluster widget")
    wait_for(lambda: form.widget.state()["status"] == "running", timeout=60, what="running")
    created = control.run(control.get("from-form"))
    assert created["spec"]["tags"] == {"team": "geo"} and created["spec"]["idle_timeout"] == 1800
    assert created["spec"]["worker_gpu"] is None
    control.run(control.stop("from-form"))
    control.run(control.wait("from-form", ("stopped",), 30))
    form.widget.close()


def test_every_clusterspec_field_is_in_a_form_or_said_why_not():
    from coiled_lab.schema import FORM, NOT_IN_THE_FORMS
    from coiled_lab.spec import FIELDS

    forgotten = set(FIELDS) - set(FORM) - set(NOT_IN_THE_FORMS)
    assert not forgotten, (f"ClusterSpec fields {sorted(forgotten)} are in neither coiled_lab/schema.py's FORM "
                           "(shown by the forms) nor NOT_IN_THE_FORMS (with the reason): add each to one")
    assert not set(FORM) & set(NOT_IN_THE_FORMS)
    assert set(FORM) | set(NOT_IN_THE_FORMS) <= set(FIELDS), "a field the table names is gone from ClusterSpec"
    assert all(reason.strip() for reason in NOT_IN_THE_FORMS.values())


def test_the_widget_renders_the_schema_of_each_backend(control, state_dir):
    from coiled_lab.schema import FORM, form_schema
    from coiled_lab.widgets import ClusterForm

    form = ClusterForm(control=control)
    assert set(form.fields) == set(FORM)
    for backend in ("local", "aws", "gcp"):
        form.fields["backend"].value = backend
        schema = form_schema(backend)
        shown = [name for name, row in form.rows.items() if row.layout.display != "none"]
        assert shown == schema["x-form"], backend  # the same fields, in the same order
        for name in shown:
            assert form.fields[name].description == schema["properties"][name]["title"], name
        for name in ("spot_policy", "backend"):
            if name in shown:
                assert list(form.fields[name].options) == schema["properties"][name]["enum"]
    # On local the cloud's fields are hidden, as in the sidebar.
    form.fields["backend"].value = "local"
    assert {"region", "zone", "worker_vm_types", "worker_gpu", "spot_policy", "allow_ingress_from"}.isdisjoint(
        name for name, row in form.rows.items() if row.layout.display != "none")


def test_form_refuses_negative_workers_at_the_field(control, state_dir):
    from coiled_lab.widgets import ClusterForm

    form = ClusterForm(control=control)
    form.fields["n_workers"].value = -1
    assert form.fields["n_workers"].value == -1  # not clamped to 0 behind the user's back
    form.submit()
    assert "n_workers: -1 is not allowed: expected at least 0" in form.errors["n_workers"].value
    wait_for(lambda: form.estimate.value == "", what="no estimate for -1 workers")  # after the debounce
    assert "expected at least 0" in form.errors["n_workers"].value
    assert control.run(control.list()) == []


def test_local_form_warns_of_workers_bigger_than_this_machine(control, state_dir):
    from dask.utils import format_bytes

    from coiled_lab.schema import machine
    from coiled_lab.widgets import ClusterForm

    here = machine()
    form = ClusterForm(control=control)
    form.fields["worker_cpu"].value = str(here["cpu"] + 1)
    form.fields["worker_memory"].value = format_bytes(here["memory"] * 2)
    assert f"this machine has {here['cpu']} vCPUs" in form.warnings["worker_cpu"].value
    assert "this machine has" in form.warnings["worker_memory"].value
    # A warning, not a block: the estimate is still asked for and given.
    wait_for(lambda: "$0.00/hour" in form.estimate.value, what="an estimate despite the warnings")
    assert not form.errors["worker_cpu"].value and not form.errors["worker_memory"].value
    form.fields["worker_cpu"].value = "1"
    form.fields["worker_memory"].value = "1 GiB"
    assert not form.warnings["worker_cpu"].value and not form.warnings["worker_memory"].value
    form.fields["worker_memory"].value = format_bytes(here["memory"] * 2)
    form.fields["backend"].value = "aws"  # a cloud's workers are VMs of their own: no warning
    assert not form.warnings["worker_memory"].value
