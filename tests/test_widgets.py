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
