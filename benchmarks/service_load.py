"""The team service (``coiled-lab serve``) under load, on a real PostgreSQL.

- 100 users × 10 clusters each in the store (rows inserted through the store as stopped,
  each with its owner, so no process runs), and ``GET /coiled-lab/api/clusters`` asked by
  every user in turn (each on its own keep-alive connection, with its own hub token):
  p50/p95 of the answers, each of which holds that user's 10 clusters only.
  Target: p95 <= 20 ms.
- Event fan-out: 100 WebSocket clients of one user on ``/coiled-lab/api/events`` (plus one
  socket for each of the 99 other users, who must receive none of it) while that user's
  real local cluster (no workers) starts and stops, a few times. Latency is the arrival
  time at a client minus the event's own time stamp (same clock). Target: p95 <= 100 ms.

Users are authenticated as in production, by the service asking the hub's ``/api/user``
with their token (answered here by a stand-in of that one endpoint; the service caches
the answer as it does a real hub's). PostgreSQL is Debian's, started in a temporary
directory (tests/postgres.py). Prints figures; asserts nothing about time.

Usage: python benchmarks/service_load.py [--users 100] [--per-user 10] [--requests 20] [--clients 100] [--rounds 3]
"""

from __future__ import annotations

import argparse
import asyncio
import http.client
import json
import os
import secrets
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.server_api import free_port, percentile  # noqa: E402


def fill_store(url: str, users: list[str], per_user: int) -> None:
    from coiled_lab.control.states import State
    from coiled_lab.control.store import ClusterRecord, open_store
    from coiled_lab.spec import parse_spec

    spec = parse_spec({"backend": "local", "n_workers": 4}).public()
    store = open_store(url)
    store.open()
    now = time.time()
    for u, user in enumerate(users):
        for i in range(per_user):
            name = f"{user}-{i}"
            store.insert_cluster(ClusterRecord(
                id=f"{u:06x}{i:06x}", name=name, backend="local", spec={**spec, "name": name},
                status=State.stopped, target="stopped", message="stopped on request", state={},
                created_at=now - per_user + i, updated_at=now, stopped_at=now, owner=user,
            ))
    store.close()


def stand_in_hub(tokens: dict[str, str], port: int) -> None:
    """JupyterHub's ``GET /hub/api/user``, in a thread: the token's user."""
    from tornado import web
    from tornado.ioloop import IOLoop

    class UserHandler(web.RequestHandler):
        def get(self) -> None:
            token = self.request.headers.get("Authorization", "").partition(" ")[2]
            if token not in tokens:
                raise web.HTTPError(403)
            self.finish({"kind": "user", "name": tokens[token], "admin": False, "groups": [],
                         "scopes": ["access:services!service=coiled-lab"], "session_id": None, "token_id": "x"})

    async def serve() -> None:
        web.Application([(r"/hub/api/user", UserHandler)]).listen(port, "127.0.0.1")
        await asyncio.Event().wait()

    threading.Thread(target=lambda: IOLoop().run_sync(serve), daemon=True).start()


def start_service(root: Path, db: str, port: int, hub_port: int) -> subprocess.Popen:
    env = {**os.environ, "DASK_COILED_LAB__STATE_DIR": str(root / "state"), "JUPYTERHUB_SERVICE_NAME": "coiled-lab",
           "JUPYTERHUB_API_TOKEN": secrets.token_hex(16), "JUPYTERHUB_API_URL": f"http://127.0.0.1:{hub_port}/hub/api",
           "JUPYTERHUB_SERVICE_URL": f"http://127.0.0.1:{port}"}
    cmd = [sys.executable, "-c", "import sys; from coiled_lab.cli import main; sys.exit(main())",
           "serve", "--allow-root", "--db", db]
    proc = subprocess.Popen(cmd, env=env, stdout=open(root / "service.log", "w"), stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
            conn.request("GET", "/services/coiled-lab/health")
            if conn.getresponse().status == 200:
                return proc
        except OSError:
            pass
        time.sleep(0.3)
    proc.kill()
    raise RuntimeError(f"coiled-lab serve did not answer; see {root / 'service.log'}")


API = "/services/coiled-lab/coiled-lab/api"


def request(conn: http.client.HTTPConnection, token: str, method: str, path: str,
            body: dict | None = None) -> tuple[int, bytes]:
    headers = {"Authorization": f"token {token}", "Content-Type": "application/json"}
    conn.request(method, API + path, body=json.dumps(body) if body is not None else None, headers=headers)
    response = conn.getresponse()
    return response.status, response.read()


def bench_list(port: int, tokens: dict[str, str], n_requests: int, per_user: int) -> None:
    conns = {t: http.client.HTTPConnection("127.0.0.1", port, timeout=30) for t in tokens}
    for token, user in tokens.items():  # warm: each token checked with the hub once, then cached
        status, body = request(conns[token], token, "GET", "/clusters")
        clusters = json.loads(body)["clusters"]
        assert status == 200 and len(clusters) == per_user and {c["owner"] for c in clusters} == {user}, status
    times = []
    for _ in range(n_requests):
        for token in tokens:
            start = time.perf_counter()
            request(conns[token], token, "GET", "/clusters")
            times.append((time.perf_counter() - start) * 1000)
    for conn in conns.values():
        conn.close()
    print(f"GET /clusters, {len(tokens)} users x {per_user} clusters ({len(tokens) * per_user} in the store), "
          f"{len(times)} requests (each user in turn):")
    print(f"  p50 {percentile(times, 50):.1f} ms   p95 {percentile(times, 95):.1f} ms   "
          f"max {max(times):.1f} ms   (target p95 <= 20 ms)")


async def bench_fanout(port: int, tokens: dict[str, str], n_clients: int, rounds: int) -> None:
    from tornado.httpclient import HTTPRequest
    from tornado.websocket import websocket_connect

    url = f"ws://127.0.0.1:{port}{API}/events"
    token, *others = list(tokens)

    def connect(t: str):
        return websocket_connect(HTTPRequest(url, headers={"Authorization": f"token {t}"}))

    sockets = [await connect(token) for _ in range(n_clients)]
    bystanders = [await connect(t) for t in others]
    arrivals: dict[tuple, list[float]] = {}
    leaked: list[dict] = []
    states: asyncio.Queue = asyncio.Queue()

    async def listen(index: int, ws) -> None:
        while (message := await ws.read_message()) is not None:
            now = time.time()
            event = json.loads(message)
            arrivals.setdefault((event["seq"], event["kind"], event["time"]), []).append((now - event["time"]) * 1000)
            if index == 0 and event["kind"] == "state":
                states.put_nowait(event["data"]["status"])

    async def watch(ws) -> None:
        while (message := await ws.read_message()) is not None:
            leaked.append(json.loads(message))

    async def until(status: str) -> None:
        while await asyncio.wait_for(states.get(), 120) != status:
            pass

    listeners = [asyncio.ensure_future(listen(i, ws)) for i, ws in enumerate(sockets)]
    watchers = [asyncio.ensure_future(watch(ws)) for ws in bystanders]
    loop = asyncio.get_running_loop()
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    for i in range(rounds):
        status, body = await loop.run_in_executor(None, request, conn, token, "POST", "/clusters",
                                                  {"backend": "local", "n_workers": 0, "name": f"fanout-{i}"})
        assert status == 201, body
        cluster_id = json.loads(body)["id"]
        await until("running")
        await loop.run_in_executor(None, request, conn, token, "DELETE", f"/clusters/{cluster_id}")
        await until("stopped")
    await asyncio.sleep(0.5)
    for ws in sockets + bystanders:
        ws.close()
    await asyncio.gather(*listeners, *watchers)

    every = [ms for per_event in arrivals.values() for ms in per_event]
    complete = [max(per_event) for per_event in arrivals.values() if len(per_event) == n_clients]
    print(f"event fan-out to {n_clients} WebSocket clients of one user ({len(others)} other users' sockets open), "
          f"{len(arrivals)} events from {rounds} cluster starts/stops:")
    print(f"  per delivery  p50 {percentile(every, 50):.1f} ms   p95 {percentile(every, 95):.1f} ms   "
          f"max {max(every):.1f} ms   (target p95 <= 100 ms)")
    print(f"  all clients   p50 {percentile(complete, 50):.1f} ms   p95 {percentile(complete, 95):.1f} ms   "
          f"({len(complete)}/{len(arrivals)} events reached every client)")
    print(f"  events delivered to the other users' sockets: {len(leaked)} (must be 0)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--users", type=int, default=100)
    parser.add_argument("--per-user", type=int, default=10)
    parser.add_argument("--requests", type=int, default=20, help="requests per user")
    parser.add_argument("--clients", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()

    from tests.postgres import Postgres

    tokens = {secrets.token_hex(16): f"user{i:03d}" for i in range(args.users)}
    postgres = Postgres().start()
    try:
        with tempfile.TemporaryDirectory(prefix="coiled-lab-bench-") as tmp:
            root = Path(tmp)
            (root / "state").mkdir(mode=0o700)
            postgres.sql("CREATE DATABASE bench")
            db = postgres.url("bench")
            fill_store(db, list(tokens.values()), args.per_user)
            hub_port, port = free_port(), free_port()
            stand_in_hub(tokens, hub_port)
            service = start_service(root, db, port, hub_port)
            try:
                bench_list(port, tokens, args.requests, args.per_user)
                asyncio.run(bench_fanout(port, tokens, args.clients, args.rounds))
            finally:
                service.send_signal(signal.SIGTERM)
                try:
                    service.wait(30)
                except subprocess.TimeoutExpired:
                    service.kill()
            print(f"(one service process on PostgreSQL; python {sys.version.split()[0]}; {os.cpu_count()} cores)")
    finally:
        postgres.stop()


if __name__ == "__main__":
    main()
