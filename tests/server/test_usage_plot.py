"""The usage plot route: one standalone HTML page with BokehJS inlined (no CDN), served
to the sidebar's and the notebook widget's iframes."""

from __future__ import annotations

import asyncio
import re
import time

from types import SimpleNamespace

import pytest


def test_series_from_samples_and_the_record():
    from coiled_lab.usage_plot import series

    record = {"workers": {"target": 3}, "cost": {"accrued": 2.0, "per_hour": 3.6, "as_of": 1_000.0}}
    samples = [{"time": 900.0, "workers": 1, "per_worker": {"a": {"cpu": 50.0}}},
               {"time": 1_000.0, "workers": 2, "per_worker": {"a": {"cpu": 20.0, "gpu": 10}, "b": {"cpu": 40.0, "gpu": 30}}}]
    data = series(record, {"samples": samples})
    assert data["workers"] == [1, 2] and data["target"] == [3, 3] and data["cpu"] == [50.0, 30.0]
    assert data["gpu"][0] != data["gpu"][0] and data["gpu"][1] == 20  # NaN without a GPU
    assert data["dollars"] == [pytest.approx(1.9), 2.0] and data["time"] == [900_000.0, 1_000_000.0]


def test_the_widget_points_at_the_server_page_only_when_there_is_a_server():
    from coiled_lab.widgets.cluster import ClusterWidget

    with_server = SimpleNamespace(control=SimpleNamespace(server_url="http://127.0.0.1:8888/base/"), cluster_id="c/1")
    assert ClusterWidget.usage_plot_url(with_server) == "/base/coiled-lab/api/clusters/c%2F1/usage/plot"
    in_process = SimpleNamespace(control=SimpleNamespace(server_url=None), cluster_id="c1")
    assert ClusterWidget.usage_plot_url(in_process) is None


@pytest.mark.slow
async def test_usage_plot_of_a_running_cluster(service, api, jp_fetch, state_dir):
    code, record = await api("POST", "coiled-lab/api/clusters", body={"n_workers": 1, "name": "plotted"})
    assert code == 201, record
    cid = record["id"]

    # Before the scheduler runs: a small page saying so, without BokehJS.
    early = await jp_fetch("coiled-lab", "api", "clusters", cid, "usage", "plot")
    assert early.code == 200 and "No usage samples yet" in early.body.decode()

    deadline = time.monotonic() + 90
    while True:
        code, usage = await api("GET", "coiled-lab/api/clusters", cid, "usage")
        if code == 200 and usage["samples"]:
            break
        assert time.monotonic() < deadline, usage
        await asyncio.sleep(0.5)

    response = await jp_fetch("coiled-lab", "api", "clusters", cid, "usage", "plot")
    assert response.code == 200
    assert response.headers["Content-Type"].startswith("text/html")
    assert "default-src 'none'" not in response.headers.get("Content-Security-Policy", "")
    page = response.body.decode()
    for title in ("Workers: ready vs target", "Utilisation, mean per worker", "$ accrued"):
        assert title in page
    assert "Bokeh" in page
    # Everything inline: no script or stylesheet fetched from anywhere.
    assert not re.findall(r"<script[^>]+src=", page) and not re.findall(r"<link[^>]+href=", page)

    # Gzipped on the wire when the browser accepts it (BokehJS is 1.3 MB).
    raw = await jp_fetch("coiled-lab", "api", "clusters", cid, "usage", "plot",
                         headers={"Accept-Encoding": "gzip"}, decompress_response=False)
    assert raw.headers.get("Content-Encoding") == "gzip" and len(raw.body) < len(page) / 2

    code, _ = await api("DELETE", "coiled-lab/api/clusters", cid)
    assert code == 202
