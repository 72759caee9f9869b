"""One local cluster driven over REST and watched over the events WebSocket: provisioning,
the dashboard through the proxy (the /status page and bokeh's WebSocket), logs from the
scheduler and the worker, the connection for a client, then DELETE until no process is left."""

from __future__ import annotations

import asyncio
import json
import re
import time
from typing import Any, Callable

import psutil
import pytest

from .conftest import cluster_processes

pytestmark = pytest.mark.slow


async def read_until(ws: Any, done: Callable[[dict], bool], timeout: float) -> list[dict]:
    """Events from the socket up to and including the first for which ``done`` is true."""
    events: list[dict] = []
    deadline = time.monotonic() + timeout
    while True:
        message = await asyncio.wait_for(ws.read_message(), deadline - time.monotonic())
        assert message is not None, f"the events socket closed after {events}"
        events.append(json.loads(message))
        if done(events[-1]):
            return events


def state_is(status: str) -> Callable[[dict], bool]:
    return lambda e: e["kind"] == "state" and e["data"]["status"] == status


async def test_cluster_lifecycle_over_rest(service, api, jp_fetch, jp_ws_fetch, jp_base_url, state_dir):
    code, record = await api("POST", "coiled-lab/api/clusters", body={"n_workers": 1, "name": "rest-one"})
    assert code == 201, record
    assert record["status"] == "pending" and record["name"] == "rest-one"
    cid = record["id"]

    # after=0 replays what happened before the socket opened, then follows live.
    ws = await jp_ws_fetch("coiled-lab", "api", "events", params={"cluster": "rest-one", "after": "0"})
    events = await read_until(ws, state_is("running"), timeout=90)
    assert {e["cluster_id"] for e in events} == {cid}
    seqs = [e["seq"] for e in events if e["seq"] is not None]  # (cost events are live only: no seq)
    assert seqs == sorted(set(seqs))
    assert [e["data"]["status"] for e in events if e["kind"] == "state"] == ["pending", "provisioning", "running"]
    progress = [e["data"] for e in events if e["kind"] == "progress"]
    assert [p["step"] for p in progress][:2] == ["network", "scheduler"]
    assert progress[-1] == {**progress[-1], "step": "workers", "ready": 1, "target": 1}

    code, record = await api("GET", "coiled-lab/api/clusters", cid)
    assert code == 200 and record["status"] == "running" and record["workers"]["ready"] == 1
    processes = cluster_processes(state_dir)
    assert len(processes) == 2  # scheduler and worker

    # The dashboard through Jupyter: the link leads to the cluster's keyed prefix, whose page
    # opens bokeh's WebSocket with the page's token (tests/server/test_proxy.py for the rest).
    link = await jp_fetch("coiled-lab", "clusters", cid, "dashboard", "status", follow_redirects=False,
                          raise_error=False)
    keyed = link.headers["Location"]
    assert link.code == 302 and keyed.startswith(f"{jp_base_url}coiled-lab/dashboards/{cid}/"), keyed
    page = await jp_fetch(keyed[len(jp_base_url):], headers={"Authorization": ""})  # the key, no Jupyter token
    assert page.code == 200 and b"bokeh" in page.body.lower()
    token = re.search(rb'"token":\s*"([^"]+)"', page.body)
    assert token, "the status page carries no bokeh session token"
    bokeh = await jp_ws_fetch(keyed[len(jp_base_url):] + "/ws", subprotocols=["bokeh", token.group(1).decode()],
                              headers={"Authorization": ""})
    header = await asyncio.wait_for(bokeh.read_message(), 30)
    assert header is not None and json.loads(header)["msgtype"] == "ACK"
    bokeh.close()
    root = await jp_fetch(keyed[len(jp_base_url):-len("status")], follow_redirects=False, raise_error=False)
    assert root.code in (301, 302)
    assert root.headers["Location"] == keyed  # the dashboard's own redirect, kept under the prefix

    code, body = await api("GET", "coiled-lab/api/clusters", cid, "logs", params={"limit": "0"})
    assert code == 200
    assert {r["role"] for r in body["logs"]} == {"scheduler", "worker"}
    assert any("Scheduler at" in r["message"] for r in body["logs"])
    code, body = await api("GET", "coiled-lab/api/clusters", cid, "logs", params={"instance": "worker", "q": "registered"})
    assert code == 200 and body["logs"] and {r["role"] for r in body["logs"]} == {"worker"}

    code, conn = await api("GET", "coiled-lab/api/clusters", cid, "connection")
    assert code == 200
    assert conn["address"].startswith("tls://127.0.0.1:") and "PRIVATE KEY" in conn["tls"]["key"]

    code, usage = await api("GET", "coiled-lab/api/clusters", cid, "usage")
    assert code == 200 and usage["enabled"]["tasks"] is True and isinstance(usage["samples"], list)
    code, body = await api("GET", "coiled-lab/api/clusters", cid, "usage", params={"since": "soon"})
    assert code == 400 and body["field"] == "since"
    code, body = await api("GET", "coiled-lab/api/clusters", cid, "notifications")
    assert code == 200 and body == {"notifications": []}
    code, body = await api("GET", "coiled-lab/api/clusters", "nope", "notifications")
    assert code == 404

    code, record = await api("DELETE", "coiled-lab/api/clusters", cid)
    assert code == 202 and record["status"] == "stopping"
    events = await read_until(ws, state_is("stopped"), timeout=60)
    assert [e["data"]["status"] for e in events if e["kind"] == "state"] == ["stopping", "stopped"]
    ws.close()

    assert cluster_processes(state_dir) == []
    for proc in processes:
        assert not proc.is_running() or proc.status() == psutil.STATUS_ZOMBIE
    code, body = await api("GET", "coiled-lab/clusters", cid, "dashboard", "status")
    assert code == 409 and "no dashboard" in body["error"]
    code, body = await api("GET", "coiled-lab/api/clusters", cid, "connection")
    assert code == 409
