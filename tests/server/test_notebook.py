"""The Binder demo notebook, run headless by nbclient in a real kernel under a real Jupyter
server with the extension: the magic, the widgets (their model state as the kernel sent
it over comm messages), the dashboard link, logs and stop. Also checks the Binder files."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import nbformat
import pytest
import yaml
from nbclient import NotebookClient

from .conftest import cluster_processes

pytestmark = pytest.mark.slow
BINDER = Path(__file__).parents[2] / "binder"


def test_binder_environment_builds_this_project():
    env = yaml.safe_load((BINDER / "environment.yml").read_text())
    deps = env["dependencies"]
    assert "python=3.11" in deps and "nodejs=20" in deps and "pip" in deps  # node builds the lab extension
    post = BINDER / "postBuild"
    assert post.stat().st_mode & stat.S_IXUSR
    assert 'pip install --no-cache-dir ".[lab]"' in post.read_text()


def text(output: dict) -> str:
    if output["output_type"] == "stream":
        return output["text"]
    return output.get("data", {}).get("text/plain", "") + output.get("data", {}).get("text/html", "")


async def test_demo_notebook_runs_under_the_server(service, state_dir):
    assert os.environ.get("COILED_LAB_API_URL")  # kernels inherit the server's API
    nb = nbformat.read(BINDER / "demo.ipynb", as_version=4)
    # After scaling, the widget the start cell displayed follows by itself (events).
    scale = next(i for i, c in enumerate(nb.cells) if c.source.startswith("%coiled scale"))
    nb.cells.insert(scale + 1, nbformat.v4.new_code_cell(
        "import time\n"
        "widget = cluster._widget()\n"
        "deadline = time.time() + 10\n"
        "while widget.state()['counts'] != '3/3 ready' and time.time() < deadline:\n"
        "    time.sleep(0.1)\n"
        "print(widget.state())"
    ))
    # The stop reaches the widget as an event too: the notebook ends only once it has
    # (else the widget state saved below may be the one before the stop's event).
    nb.cells.append(nbformat.v4.new_code_cell(
        "deadline = time.time() + 10\n"
        "while widget.state()['status'] != 'stopped' and time.time() < deadline:\n"
        "    time.sleep(0.1)"
    ))
    client = NotebookClient(nb, timeout=180, kernel_name="python3", store_widget_state=True)
    await client.async_execute()

    outputs = {i: cell.get("outputs", []) for i, cell in enumerate(nb.cells) if cell.cell_type == "code"}
    source = {i: cell.source for i, cell in enumerate(nb.cells)}
    by_source = {source[i].splitlines()[0]: outs for i, outs in outputs.items()}

    start = by_source["cluster = %coiled start 2 --name demo --idle-timeout 30m"]
    views = [o for o in start if "application/vnd.jupyter.widget-view+json" in o.get("data", {})]
    assert views, "the live cluster widget is displayed while the cluster starts"
    assert any("Cluster(demo" in text(o) for o in start)
    assert "1.0" in text(by_source["import dask.array as da"][0])
    assert "3 workers wanted" in text(by_source["%coiled scale demo 3 --wait"][0])
    log_lines = "".join(text(o) for o in by_source["%coiled logs demo --instance scheduler --limit 5"]).splitlines()
    assert len(log_lines) == 5 and all("scheduler-scheduler" in line for line in log_lines)
    dash = "".join(text(o) for o in by_source["%coiled dashboard demo"])
    assert "/coiled-lab/clusters/" in dash and "/dashboard/status" in dash  # proxied by the Jupyter server
    assert "demo" in "".join(text(o) for o in by_source["%coiled list"])
    assert "demo: stopped" in "".join(text(o) for o in by_source["%coiled stop demo"])

    followed = "".join(text(o) for o in by_source["import time"])
    assert "'status': 'running'" in followed and "'counts': '3/3 ready'" in followed

    # The widgets' last state, as the kernel sent it over comm messages: the cluster
    # widget shows the stop that the last cell made, the form shows its estimate.
    state = nb.metadata["widgets"]["application/vnd.jupyter.widget-state+json"]["state"]
    models = [m["state"] for m in state.values()]
    labels = {m.get("value") for m in models if m.get("_model_name") == "LabelModel"}
    assert "0/3 ready" in labels
    progress = [m for m in models if m.get("_model_name") == "IntProgressModel"]
    assert any(m["max"] == 3 for m in progress)
    html = " ".join(str(m.get("value")) for m in models if m.get("_model_name") == "HTMLModel")
    assert ">stopped</span>" in html and "$0.00/hour" in html
    assert "$0.00/hour</b> for 1 workers" in html  # the form's estimate
    buttons = [m for m in models if m.get("_model_name") == "ButtonModel" and m.get("description") == "Stop"]
    assert buttons and all(b["disabled"] for b in buttons)

    assert cluster_processes(state_dir) == []
