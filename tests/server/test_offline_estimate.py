"""The sidebar form's routes with no cloud credentials, and a Jupyter server that answers an
estimate and stops promptly on SIGTERM while a price request hangs."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from coiled_lab import config

from ..conftest import wait_for
from ..pricelist import HANG, PriceList


async def test_the_forms_routes_answer_without_credentials(no_cloud, service, api):
    """What the sidebar asks for - the type list, then the estimate - on a server that was
    never given credentials: the snapshot's types and prices, labelled, not a 5xx."""
    for backend, region in (("aws", "eu-west-1"), ("gcp", "europe-west1")):
        code, catalog = await api("GET", "coiled-lab/api/catalog", params={"backend": backend, "region": region})
        assert code == 200, catalog
        assert catalog["source"].startswith("snapshot: prices as of") and "no credentials" in catalog["offline"]
        names = {t["name"] for t in catalog["instance_types"]}
        defaults = {config.get(f"{backend}.scheduler-vm-type"), *config.get(f"{backend}.worker-vm-types")}
        assert defaults - names <= ({"m6a.xlarge"} if backend == "aws" else set()), defaults - names
        started = time.monotonic()
        code, est = await api("POST", "coiled-lab/api/estimate", body={"backend": backend, "n_workers": 3,
                                                                       "region": region})
        assert code == 200 and est["per_hour"] > 0 and time.monotonic() - started < 10, est
        assert est["source"].startswith("snapshot: prices as of") and est["worker_vm_type"] in names


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _call(url: str, token: str, body: bytes | None = None, timeout: float = 30) -> tuple[int, dict]:
    request = urllib.request.Request(url, data=body, method="POST" if body is not None else "GET",
                                     headers={"Authorization": f"token {token}", "Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=timeout) as reply:
        return reply.status, json.loads(reply.read() or b"null")


@pytest.mark.slow
def test_a_hanging_price_request_neither_holds_an_estimate_nor_the_servers_exit(no_cloud, tmp_path: Path):
    """The Price List endpoint accepts and never answers, EC2 cannot be reached: POST
    /estimate answers from the snapshot within 10 s, and SIGTERM ends the server at once
    although that request still hangs."""
    price_list = PriceList()
    price_list.delay = HANG
    port, token = _free_port(), "offline-estimate-test"
    (tmp_path / "config.json").write_text(json.dumps(
        {"ServerApp": {"jpserver_extensions": {"coiled_lab_server": True}}}))
    env = {**no_cloud, "AWS_ACCESS_KEY_ID": "AKIAFAKEFORTESTS0000", "AWS_SECRET_ACCESS_KEY": "fake",
           "AWS_ENDPOINT_URL": "http://127.0.0.1:9", "AWS_ENDPOINT_URL_PRICING": price_list.url,
           "DASK_COILED_LAB__STATE_DIR": str(tmp_path / "state"), "JUPYTER_CONFIG_DIR": str(tmp_path),
           "JUPYTER_RUNTIME_DIR": str(tmp_path / "runtime")}
    log = open(tmp_path / "server.log", "w")
    server = subprocess.Popen([sys.executable, "-m", "jupyter", "server", "--no-browser", "--allow-root",
                               f"--port={port}", f"--IdentityProvider.token={token}", f"--config={tmp_path / 'config.json'}",
                               f"--ServerApp.root_dir={tmp_path}"], env=env, stdout=log, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    try:
        wait_for(lambda: _reachable(f"{base}/api/status", token), timeout=60, what="the Jupyter server")
        started = time.monotonic()
        code, est = _call(f"{base}/coiled-lab/api/estimate", token,
                          json.dumps({"backend": "aws", "n_workers": 4, "worker_vm_types": ["m6i.xlarge"]}).encode())
        took = time.monotonic() - started
        assert code == 200 and took < 10, (took, est)
        assert est["source"].startswith("snapshot: prices as of")
        wait_for(lambda: price_list.requests, timeout=5, what="the Price List API asked (it holds the request)")

        stopping = time.monotonic()
        server.send_signal(signal.SIGTERM)
        server.wait(timeout=30)
        assert time.monotonic() - stopping < 5, (tmp_path / "server.log").read_text()[-3000:]
    finally:
        if server.poll() is None:
            server.kill()
        log.close()
        price_list.close()


def _reachable(url: str, token: str) -> bool:
    try:
        return _call(url, token, timeout=2)[0] == 200
    except OSError:
        return False
