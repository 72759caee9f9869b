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

    form.fields["worker_gpu"].value = 1  # the local backend has no GPUs
    form.submit()
    wait_for(lambda: "no GPUs" in form.errors["worker_gpu"].value, what="the error at its field")
    assert control.run(control.list()) == []

    form.fields["worker_gpu"].value = 0
    form.fields["tags"].value = "team"
    assert form.submit() is None and "KEY=VALUE" in form.errors["tags"].value

    form.fields["tags"].value = "team=geo"
    form.fields["n_workers"].value = 1
    form.fields["name"].value = "from-form"
    form.submit()
    wait_for(lambda: form.widget is not None, what="the cluster widget")
    wait_for(lambda: form.widget.state()["status"] == "running", timeout=60, what="running")
    created = control.run(control.get("from-form"))
    assert created["spec"]["tags"] == {"team": "geo"} and created["spec"]["worker_gpu"] is None
    control.run(control.stop("from-form"))
    control.run(control.wait("from-form", ("stopped",), 30))
    form.widget.close()


# ClusterSpec fields each form leaves to the server's defaults, on purpose. A field added to
# ClusterSpec must be shown by both forms or be named here (with the reason in review).
NOT_IN_THE_SIDEBAR = {"scheduler_vm_type", "allow_cross_zone", "connect_via", "no_client_timeout", "max_lifetime",
                      "environ", "python_version"}
NOT_IN_THE_WIDGET = {"scheduler_vm_type", "zone", "allow_cross_zone", "connect_via", "no_client_timeout",
                     "max_lifetime", "environ", "package_sync", "software", "python_version"}


def test_no_clusterspec_field_is_forgotten_by_a_form(control, state_dir):
    import re
    from pathlib import Path

    from coiled_lab.spec import FIELDS
    from coiled_lab.widgets import ClusterForm
    from coiled_lab.widgets.form import CLOUD_ONLY

    source = (Path(__file__).parents[1] / "labextension" / "src" / "models" / "form.ts").read_text()
    sidebar = set(re.findall(r"'(\w+)'", re.search(r"export const FIELDS = \[(.*?)\] as const", source, re.S)[1]))
    assert sidebar | NOT_IN_THE_SIDEBAR == set(FIELDS) and not sidebar & NOT_IN_THE_SIDEBAR
    form = ClusterForm(control=control)
    assert set(form.fields) | NOT_IN_THE_WIDGET == set(FIELDS) and not set(form.fields) & NOT_IN_THE_WIDGET
    # On local the cloud's fields are hidden, as in the sidebar; a cloud backend shows them.
    assert all(form.rows[name].layout.display == "none" for name in CLOUD_ONLY)
    form.fields["backend"].value = "aws"
    assert all(form.rows[name].layout.display != "none" for name in CLOUD_ONLY)


def test_form_refuses_negative_workers_at_the_field(control, state_dir):
    from coiled_lab.widgets import ClusterForm

    form = ClusterForm(control=control)
    form.fields["n_workers"].value = -1
    assert form.fields["n_workers"].value == -1  # not clamped to 0 behind the user's back
    form.submit()
    wait_for(lambda: "n_workers" in form.errors["n_workers"].value, what="the error at its field")
    assert control.run(control.list()) == []
