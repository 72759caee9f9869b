"""The server extension's API under load, against a real ``jupyter server`` subprocess.

- ``GET /coiled-lab/api/clusters`` with 1000 clusters in the store (rows inserted through
  ``Store`` as stopped, so no process runs): p50/p95 of sequential requests on one
  keep-alive connection. Target: p95 <= 20 ms.
- Event fan-out: 50 WebSocket clients on ``/coiled-lab/api/events`` while a real local
  cluster (no workers) starts and stops, a few times. Latency is the arrival time at a
  client minus the event's own time stamp (same clock); "all clients" is the time until
  the last of the 50 has it. Target: p95 <= 100 ms.

Prints figures; asserts nothing about time.

Usage: python benchmarks/server_api.py [--clusters 1000] [--requests 300] [--clients 50] [--rounds 3]
"""

from __future__ import annotations

import argparse
import asyncio
import http.client
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(p / 100 * (len(ordered) - 1))))]


def fill_store(state_dir: Path, n: int) -> None:
    from coiled_lab.control.states import State
    from coiled_lab.control.store import ClusterRecord, Store
    from coiled_lab.spec import parse_spec

    spec = parse_spec({"backend": "local", "n_workers": 4}).public()
    store = Store(state_dir / "coiled-lab.sqlite")
    now = time.time()
    for i in range(n):
        cluster_id = f"{i:012x}"
        store.insert_cluster(ClusterRecord(
            id=cluster_id, name=f"bench-{i}", backend="local", spec={**spec, "name": f"bench-{i}"},
            status=State.stopped, target="stopped", message="stopped on request", state={},
            created_at=now - n + i, updated_at=now, stopped_at=now,
        ))
    store.close()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(root: Path, port: int, token: str, own_session: bool = False) -> subprocess.Popen:
    """A ``jupyter server`` with the extension; ``own_session``: in a session (hence a
    scheduling group) of its own, as a server started from its own terminal is."""
    env = {**os.environ, "DASK_COILED_LAB__STATE_DIR": str(root / "state"), "JUPYTER_RUNTIME_DIR": str(root / "runtime")}
    cmd = [
        sys.executable, "-m", "jupyter_server", "--no-browser", "--allow-root", "--ip=127.0.0.1",
        f"--port={port}", "--ServerApp.port_retries=0", f"--IdentityProvider.token={token}",
        f"--ServerApp.root_dir={root}",
    ]
    log = open(root / "server.log", "w")
    proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=own_session)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            if request(port, token, "GET", "/coiled-lab/api/clusters?live=true")[0] == 200:
                return proc
        except OSError:
            pass
        time.sleep(0.2)
    proc.kill()
    raise RuntimeError(f"the server did not answer; see {root / 'server.log'}")


def request(port: int, token: str, method: str, path: str, body: dict | None = None,
            conn: http.client.HTTPConnection | None = None) -> tuple[int, bytes]:
    own = conn is None
    conn = conn or http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    headers = {"Authorization": f"token {token}", "Content-Type": "application/json"}
    conn.request(method, path, body=json.dumps(body) if body is not None else None, headers=headers)
    response = conn.getresponse()
    data = response.read()
    if own:
        conn.close()
    return response.status, data


def bench_list(port: int, token: str, n_requests: int, n_clusters: int) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    status, body = request(port, token, "GET", "/coiled-lab/api/clusters", conn=conn)
    assert status == 200 and len(json.loads(body)["clusters"]) == n_clusters, status
    for _ in range(10):
        request(port, token, "GET", "/coiled-lab/api/clusters", conn=conn)
    times = []
    for _ in range(n_requests):
        start = time.perf_counter()
        request(port, token, "GET", "/coiled-lab/api/clusters", conn=conn)
        times.append((time.perf_counter() - start) * 1000)
    conn.close()
    print(f"GET /clusters with {n_clusters} clusters ({len(body) / 1e6:.2f} MB), {n_requests} requests:")
    print(f"  p50 {percentile(times, 50):.1f} ms   p95 {percentile(times, 95):.1f} ms   "
          f"max {max(times):.1f} ms   (target p95 <= 20 ms)")


async def bench_fanout(port: int, token: str, n_clients: int, rounds: int) -> None:
    from tornado.httpclient import HTTPRequest
    from tornado.websocket import websocket_connect

    url = f"ws://127.0.0.1:{port}/coiled-lab/api/events"
    headers = {"Authorization": f"token {token}"}
    sockets = [await websocket_connect(HTTPRequest(url, headers=headers)) for _ in range(n_clients)]
    # (seq, kind, time) -> latency (ms) at each client; cost events are live only (no seq).
    arrivals: dict[tuple, list[float]] = {}
    states: asyncio.Queue = asyncio.Queue()

    async def listen(index: int, ws) -> None:
        while True:
            message = await ws.read_message()
            if message is None:
                return
            now = time.time()
            event = json.loads(message)
            key = (event["seq"], event["kind"], event["time"])
            arrivals.setdefault(key, []).append((now - event["time"]) * 1000)
            if index == 0 and event["kind"] == "state":
                states.put_nowait(event["data"]["status"])

    async def until(status: str) -> None:
        while await asyncio.wait_for(states.get(), 120) != status:
            pass

    listeners = [asyncio.ensure_future(listen(i, ws)) for i, ws in enumerate(sockets)]
    loop = asyncio.get_running_loop()
    for i in range(rounds):
        status, body = await loop.run_in_executor(
            None, request, port, token, "POST", "/coiled-lab/api/clusters", {"n_workers": 0, "name": f"fanout-{i}"}
        )
        assert status == 201, body
        cluster_id = json.loads(body)["id"]
        await until("running")
        await loop.run_in_executor(None, request, port, token, "DELETE", f"/coiled-lab/api/clusters/{cluster_id}")
        await until("stopped")
    await asyncio.sleep(0.5)
    for ws in sockets:
        ws.close()
    await asyncio.gather(*listeners)

    every = [ms for per_event in arrivals.values() for ms in per_event]
    complete = [max(per_event) for per_event in arrivals.values() if len(per_event) == n_clients]
    print(f"event fan-out to {n_clients} WebSocket clients, {len(arrivals)} events from {rounds} cluster starts/stops:")
    print(f"  per delivery  p50 {percentile(every, 50):.1f} ms   p95 {percentile(every, 95):.1f} ms   "
          f"max {max(every):.1f} ms   (target p95 <= 100 ms)")
    print(f"  all clients   p50 {percentile(complete, 50):.1f} ms   p95 {percentile(complete, 95):.1f} ms   "
          f"({len(complete)}/{len(arrivals)} events reached every client)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clusters", type=int, default=1000)
    parser.add_argument("--requests", type=int, default=300)
    parser.add_argument("--clients", type=int, default=50)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="coiled-lab-bench-") as tmp:
        root = Path(tmp)
        (root / "state").mkdir(mode=0o700)
        fill_store(root / "state", args.clusters)
        port, token = free_port(), secrets.token_hex(16)
        server = start_server(root, port, token)
        try:
            bench_list(port, token, args.requests, args.clusters)
            asyncio.run(bench_fanout(port, token, args.clients, args.rounds))
        finally:
            server.send_signal(signal.SIGTERM)
            try:
                server.wait(30)
            except subprocess.TimeoutExpired:
                server.kill()
        print(f"(one server process; python {sys.version.split()[0]}; {os.cpu_count()} cores)")


if __name__ == "__main__":
    main()
