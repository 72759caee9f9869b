"""The live cluster widget's time left comes from the server's ``lifetime`` events: a
client connecting stops the no-client countdown in the widget, its leaving starts it, with
no state change in between to make the widget read the cluster again. Its log pane names
instances as the lab's log viewer does."""

from __future__ import annotations

import pytest

from .conftest import wait_for

pytestmark = pytest.mark.slow

NO_CLIENT = 600  # seconds: long enough that the cluster never stops during the test


def test_widget_counts_down_from_lifetime_events(control, state_dir):
    from distributed import Client

    from coiled_lab.tls import TLSMaterial
    from coiled_lab.widgets import ClusterWidget

    record = control.run(control.create({"n_workers": 1, "name": "lively", "no_client_timeout": NO_CLIENT}))
    widget = ClusterWidget(record["id"], control)
    try:
        wait_for(lambda: widget.state()["status"] == "running", timeout=60, what="widget shows running")
        # No client ever connected: the no-client clock does not count yet.
        assert "no client" not in widget.stops.value, widget.stops.value

        conn = control.run(control.connection(record["id"]))
        security = TLSMaterial(conn["tls"]["cert"], conn["tls"]["key"]).security()
        with Client(conn["address"], security=security, timeout=30):
            wait_for(lambda: widget.record.get("time_left") is not None, what="the time left in the widget")
            assert widget.record["time_left"]["no_client_timeout"] is None
            assert "no client" not in widget.stops.value
        # The client left: the countdown starts, told by a lifetime event alone.
        status = widget.state()["status"]
        wait_for(lambda: "no client" in widget.stops.value, timeout=15, what="the no-client countdown")
        left = widget.record["time_left"]["no_client_timeout"]
        assert 0 < left <= NO_CLIENT, left
        assert widget.state()["status"] == status == "running"

        # Log lines name the local scheduler once: "scheduler", never "scheduler-scheduler".
        wait_for(lambda: " scheduler " in widget.logs.value, timeout=30, what="scheduler lines in the widget")
        assert "scheduler-scheduler" not in widget.logs.value
        wait_for(lambda: " worker-" in widget.logs.value, timeout=30, what="worker lines in the widget")
    finally:
        widget.close()
        control.run(control.stop(record["id"]))
