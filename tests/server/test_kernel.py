"""A real kernel started by the server drives a cluster through the server's API, and no
cloud secret the server holds reaches a kernel, a dask process, a REST or WebSocket body,
a log line or a file under the state dir (except the 0600 credentials file itself)."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import stat
from typing import Any

import pytest

from .conftest import cluster_processes

pytestmark = pytest.mark.slow

ENV_KEY_ID = "AKIAENVENVENVENV4321"
ENV_SECRET = "envSecretZ9q8w7e6r5t4y3u2i1o0pLKJHGFDSA"
PUT_KEY_ID = "AKIAPUTPUTPUTPUT0001"
PUT_SECRET = "putSecretM1n2b3v4c5x6z7l8k9j0hGFDSAqwer"
SECRETS = (ENV_SECRET, PUT_SECRET)


@pytest.fixture
def jp_server_config(jp_server_config, monkeypatch):
    """The server starts with AWS keys in its environment, as an admin would set them."""
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", ENV_KEY_ID)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", ENV_SECRET)
    return jp_server_config


async def run_in_kernel(kc: Any, code: str, timeout: float = 180) -> str:
    """Execute ``code``; return its stdout, or fail with the kernel's traceback."""
    out: list[str] = []

    def hook(msg: dict) -> None:
        if msg["msg_type"] == "stream":
            out.append(msg["content"]["text"])

    reply = await kc.execute_interactive(code, output_hook=hook, timeout=timeout)
    content = reply["content"]
    assert content["status"] == "ok", "\n".join(content.get("traceback", [])) + "".join(out)
    return "".join(out)


KERNEL_START = """
import json, os
import coiled_lab
from coiled_lab.connect import get_control
cluster = coiled_lab.Cluster(n_workers=2, name="from-kernel")
client = cluster.get_client()
total = client.submit(sum, range(10)).result()
print(json.dumps({
    "control": type(get_control()).__name__,
    "total": total,
    "n_workers": len(client.scheduler_info()["workers"]),
    "dashboard": cluster.dashboard_link,
    "id": cluster.cluster_id,
    "environ": dict(os.environ),
}))
"""

KERNEL_STOP = """
client.close()
cluster.close()
print(cluster.record["status"])
"""


async def test_kernel_drives_a_cluster_and_no_secret_leaks(
    service, api, jp_serverapp, jp_ws_fetch, jp_logging_stream, caplog, state_dir
):
    caplog.set_level(logging.DEBUG)
    assert "AWS_SECRET_ACCESS_KEY" not in os.environ  # taken by the server, kept off kernels

    code, status = await api("PUT", "coiled-lab/api/credentials", body={
        "provider": "aws", "access_key_id": PUT_KEY_ID, "secret_access_key": PUT_SECRET, "region": "eu-west-1",
    })
    assert code == 200
    assert status["aws"] == {
        "configured": True, "source": "stored", "account": None, "region": "eu-west-1", "key_id_last4": "0001",
    }
    credentials_file = state_dir / "credentials.json"
    assert stat.S_IMODE(credentials_file.stat().st_mode) == 0o600

    code, kernel = await api("POST", "api/kernels", body={"name": "python3"})
    assert code == 201
    kc = jp_serverapp.kernel_manager.get_kernel(kernel["id"]).client()
    kc.start_channels()
    try:
        await kc.wait_for_ready(timeout=60)
        seen = json.loads((await run_in_kernel(kc, KERNEL_START)).strip().splitlines()[-1])
        assert seen["control"] == "APIClient" and seen["total"] == 45 and seen["n_workers"] == 2
        cid = seen["id"]
        assert seen["dashboard"] == f"{jp_serverapp.base_url}coiled-lab/clusters/{cid}/dashboard/status"
        assert seen["environ"]["COILED_LAB_API_URL"] == service.api_url
        assert not any(key in seen["environ"] for key in ("AWS_SECRET_ACCESS_KEY", "AWS_ACCESS_KEY_ID"))

        code, listing = await api("GET", "coiled-lab/api/clusters", params={"live": "true"})
        (mine,) = [c for c in listing["clusters"] if c["id"] == cid]
        assert mine["name"] == "from-kernel" and mine["status"] == "running" and mine["workers"]["ready"] == 2

        processes = cluster_processes(state_dir)
        assert len(processes) == 3
        dask_environments = [proc.environ() for proc in processes]
        for env in dask_environments:
            assert "COILED_LAB_API_TOKEN" not in env and service.token not in json.dumps(env)

        # Everything a client can read about the cluster, events replayed from the start included.
        for parts in ((cid,), (cid, "connection"), (cid, "logs")):
            code, _ = await api("GET", "coiled-lab/api/clusters", *parts)
            assert code == 200
        await api("GET", "coiled-lab/api/credentials")
        ws = await jp_ws_fetch("coiled-lab", "api", "events", params={"after": "0"})
        ws_bodies = [await asyncio.wait_for(ws.read_message(), 10)]
        while '"status": "running"' not in ws_bodies[-1]:  # the replay, up to the cluster running
            ws_bodies.append(await asyncio.wait_for(ws.read_message(), 10))
        ws.close()

        assert (await run_in_kernel(kc, KERNEL_STOP)).strip() == "stopped"
    finally:
        kc.stop_channels()
        await api("DELETE", "api/kernels", kernel["id"])
    assert cluster_processes(state_dir) == []

    scanned = {
        "REST bodies": b"\n".join(api.bodies).decode(),
        "WebSocket messages": "\n".join(ws_bodies),
        "kernel environment": json.dumps(seen["environ"]),
        "dask process environments": json.dumps(dask_environments),
        "server log": jp_logging_stream.getvalue(),
        "log records": caplog.text,
    }
    for path in state_dir.rglob("*"):
        if path.is_file() and path != credentials_file:
            scanned[str(path)] = path.read_bytes().decode(errors="replace")
    for where, text in scanned.items():
        for secret in SECRETS:
            assert secret not in text, f"a secret leaked into {where}"
    assert PUT_SECRET in credentials_file.read_text()  # the scan would have seen it
