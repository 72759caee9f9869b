"""The server under load: many REST clients and event subscribers while clusters provision.

A real ``jupyter server`` subprocess with the extension drives clusters on emulated EC2
(moto behind the tests' proxy; the EC2 emulator boots every instance as local dask
processes). A separate load process runs ``--clients`` concurrent REST clients, each on
one kept-alive HTTP/1.1 connection (as a browser tab polls) and looping over a mix of
routes with a pause of about ``--interval`` seconds between its requests (a sidebar or
widget polling, each starting at its own moment within the first interval; 0 = no pause,
the server saturated), and ``--subscribers`` WebSockets on
``/events?after=0``. Meanwhile ``--clusters`` clusters are created, reach ``running``,
and are stopped. Then it prints, per route, p50/p95/p99 latency and the requests done;
errors (5xx or failed connections; 4xx such as 409 "not running yet" are answers and
counted apart); and, per subscriber, the events received against the events stored
(each must have every stored event, in order: nothing lost). Target: p95 <= 50 ms.

The clusters have ``--workers`` workers each (default 1): 20 clusters of N workers are
20*(N+1) dask processes plus their bootstraps on this machine's cores, and the emulator
boots them all here. On EC2 those processes, and AWS's API, run on machines of their own:
here the VMs run at ``--vm-nice`` (19) and moto, the proxy and the emulator at
``--aws-nice`` (10), the server and the clients in sessions of their own at 0 (where Linux
groups sessions for scheduling, each group is niced too); 0 and 0 show the server sharing
the cores with all of it. The catalog and prices are read once before the load (a cold
read is seconds of paginated EC2 calls, cached for an hour; its time is printed).
``GET /clusters/{id}/logs`` is left out of the mix: each call is a FilterLogEvents to
moto, whose latency is moto's, not the server's.

With no pause, latency is just clients / throughput (Little's law): 200 clients that
never wait see p50 = 200 / (requests per second the server manages), whatever the code
does, so that mode prints the throughput; the p95 target is for clients that poll.

Prints figures; asserts nothing about time.

Usage: python benchmarks/load.py [--clients 200] [--subscribers 50] [--clusters 20] [--workers 1] [--interval 1]
                                [--vm-nice 19] [--aws-nice 10]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import multiprocessing
import os
import random
import secrets
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import psutil  # noqa: E402

from benchmarks.emulated_aws import emulated_aws  # noqa: E402
from benchmarks.server_api import free_port, percentile, request, start_server  # noqa: E402

# What the emulator needs to boot clusters on shared cores (as tests/aws does); how often
# the server and the VMs poll stays at the defaults, the load a deployment puts on them.
AWS_CONFIG = {
    "aws.nanny": False, "aws.death-timeout": 60, "aws.start-timeout": 300, "aws.max-attempts": 6,
    "aws.region": "us-east-1",
}
ROUTES = [  # (label, method, path with {id}, body)
    ("GET /clusters", "GET", "/clusters?live=true", None),
    ("GET /clusters/{id}", "GET", "/clusters/{id}", None),
    ("GET /clusters/{id}/connection", "GET", "/clusters/{id}/connection", None),
    ("GET /clusters/{id}/notifications", "GET", "/clusters/{id}/notifications", None),
    ("GET /clusters/{id}/usage", "GET", "/clusters/{id}/usage", None),
    ("POST /estimate", "POST", "/estimate", {"backend": "aws", "n_workers": 4}),
    ("GET /catalog", "GET", "/catalog?backend=aws&region=us-east-1", None),
    ("GET /defaults", "GET", "/defaults", None),
]
API = "/coiled-lab/api"


# == the load process =====================================================================
async def _load(port: int, token: str, clients: int, subscribers: int, interval: float, ids: list[str],
                ready: Any, stop: Any) -> dict[str, Any]:
    import aiohttp
    from tornado.httpclient import HTTPRequest
    from tornado.websocket import websocket_connect

    headers = {"Authorization": f"token {token}", "Content-Type": "application/json"}
    latencies: dict[str, list[float]] = {label: [] for label, *_ in ROUTES}
    answers: dict[str, int] = {}
    errors: list[str] = []
    received: list[list[int]] = [[] for _ in range(subscribers)]

    async def subscriber(i: int) -> None:
        ws = await websocket_connect(HTTPRequest(f"ws://127.0.0.1:{port}{API}/events?after=0", headers=headers))
        sockets.append(ws)
        while True:
            message = await ws.read_message()
            if message is None:
                return
            event = json.loads(message)
            if event.get("seq") is not None:
                received[i].append(event["seq"])

    async def client(rng: random.Random) -> None:
        """One browser tab or kernel: one HTTP/1.1 connection, kept alive between requests."""
        if interval:  # pollers that started at different moments, not one burst of every client at once
            await asyncio.sleep(rng.uniform(0, interval))
        connector = aiohttp.TCPConnector(limit=1, keepalive_timeout=60)
        async with aiohttp.ClientSession(connector=connector, headers=headers,
                                         timeout=aiohttp.ClientTimeout(total=60)) as session:
            while not stop.is_set():
                label, method, path, body = rng.choice(ROUTES)
                cluster = rng.choice(ids) if ids else "none"
                start = time.perf_counter()
                text = b""
                try:
                    async with session.request(method, f"http://127.0.0.1:{port}{API}{path.format(id=cluster)}",
                                               data=json.dumps(body) if body is not None else None) as response:
                        text = await response.read()
                        code = response.status
                except Exception as exc:  # noqa: BLE001 - a refused or dropped connection is an error to report
                    code = 599
                    errors.append(f"{label}: {type(exc).__name__}: {exc}")
                latencies[label].append((time.perf_counter() - start) * 1000)
                answers[str(code)] = answers.get(str(code), 0) + 1
                if 500 <= code < 599:
                    errors.append(f"{label}: {code} {text[:200]!r}")
                if interval:
                    await asyncio.sleep(rng.uniform(0.5, 1.5) * interval)

    sockets: list[Any] = []
    listening = [asyncio.ensure_future(subscriber(i)) for i in range(subscribers)]
    while len(sockets) < subscribers:
        await asyncio.sleep(0.05)
    ready.set()
    started, cpu_started = time.monotonic(), time.process_time()
    workers = [asyncio.ensure_future(client(random.Random(i))) for i in range(clients)]
    while not stop.is_set():
        await asyncio.sleep(0.1)
    await asyncio.gather(*workers)
    seconds, cpu = time.monotonic() - started, time.process_time() - cpu_started
    await asyncio.sleep(1.0)  # the last events on their way
    for ws in sockets:
        ws.close()
    await asyncio.gather(*listening, return_exceptions=True)
    return {"latencies": latencies, "answers": answers, "errors": errors, "received": received, "seconds": seconds,
            "cpu": cpu}


def _load_process(port: int, token: str, clients: int, subscribers: int, interval: float, ids_file: str,
                  ready: Any, go: Any, stop: Any, out: Any) -> None:
    """The clients, in a process of their own: the harness's moto and emulator threads in
    the parent would otherwise share one GIL with them and skew the latencies."""
    os.setsid()  # a scheduling group of its own, as a browser on another machine would be (see _lower)
    go.wait()
    ids = json.loads(Path(ids_file).read_text())
    out.put(asyncio.run(_load(port, token, clients, subscribers, interval, ids, ready, stop)))


def _lower(nice: int) -> None:
    """This process (moto, the proxy, the emulator: what stands for AWS's own machines) at
    ``nice``. Linux keeps a nice value per thread, so each thread is set (the threads they
    start, such as moto's one per request, inherit it); where Linux schedules sessions as
    groups (autogroup), nice counts only inside a group, so this session's group is set
    too. The server and the clients run in sessions of their own, at nice 0."""
    if not nice:
        return
    for task in os.listdir("/proc/self/task"):
        os.setpriority(os.PRIO_PROCESS, int(task), nice)
    with contextlib.suppress(OSError):
        Path("/proc/self/autogroup").write_text(str(nice))


# == driving clusters =====================================================================
def _statuses(port: int, token: str) -> dict[str, str]:
    status, body = request(port, token, "GET", f"{API}/clusters")
    assert status == 200, body
    return {c["id"]: c["status"] for c in json.loads(body)["clusters"]}


def _wait_all(port: int, token: str, ids: list[str], wanted: set[str], timeout: float) -> float:
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        seen = _statuses(port, token)
        if all(seen.get(i) in wanted | {"error", "stopped"} for i in ids):
            return time.monotonic() - start
        time.sleep(0.5)
    raise TimeoutError(f"clusters not {wanted} after {timeout}s: {_statuses(port, token)}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clients", type=int, default=200)
    parser.add_argument("--subscribers", type=int, default=50)
    parser.add_argument("--clusters", type=int, default=20)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--interval", type=float, default=1.0, help="seconds each client waits between requests")
    parser.add_argument("--timeout", type=float, default=600, help="seconds to wait for all clusters to run")
    parser.add_argument("--server-log", type=Path, help="keep the Jupyter server's log here")
    parser.add_argument("--vm-nice", type=int, default=19,
                        help="niceness of the emulated VMs' processes (on EC2 they have cores of their own; "
                             "0 = they compete with the server for this machine's cores)")
    parser.add_argument("--aws-nice", type=int, default=10,
                        help="niceness of this harness's threads: moto, the proxy and the emulator stand "
                             "for AWS's own machines (0 = they compete with the server)")
    args = parser.parse_args()

    for key, value in AWS_CONFIG.items():
        os.environ["DASK_COILED_LAB__" + key.upper().replace(".", "__").replace("-", "_")] = str(value)
    with emulated_aws("coiled-lab-load-", nice=args.vm_nice) as aws, tempfile.TemporaryDirectory(prefix="coiled-lab-load-") as tmp:
        root = Path(tmp)
        (root / "state").mkdir(mode=0o700)
        port, token = free_port(), secrets.token_hex(16)
        server = start_server(root, port, token, own_session=True)
        ctx = multiprocessing.get_context("spawn")
        ready, go, stop, out = ctx.Event(), ctx.Event(), ctx.Event(), ctx.Queue()
        ids_file = root / "ids.json"
        loader = ctx.Process(target=_load_process, args=(port, token, args.clients, args.subscribers,
                                                         args.interval, str(ids_file), ready, go, stop, out))
        loader.start()
        _lower(args.aws_nice)  # after the server and the clients started: they keep nice 0
        try:
            # The region's catalog and prices are read from EC2 once, then cached for an
            # hour: read them first (timed), so the load measures the server, not a cold cache.
            cold = time.monotonic()
            for _, method, path, body in ROUTES[-3:-1]:
                status, answer = request(port, token, method, API + path, body)
                assert status == 200, answer
            cold = time.monotonic() - cold
            ids = []
            created = time.monotonic()
            for i in range(args.clusters):
                status, body = request(port, token, "POST", f"{API}/clusters",
                                       {"backend": "aws", "n_workers": args.workers, "name": f"load-{i}"})
                assert status == 201, body
                ids.append(json.loads(body)["id"])
            ids_file.write_text(json.dumps(ids))
            server_process = psutil.Process(server.pid)
            cpu_before = sum(server_process.cpu_times()[:2])
            go.set()
            ready.wait(120)
            _wait_all(port, token, ids, {"running"}, args.timeout)
            up = time.monotonic() - created
            statuses = _statuses(port, token)
            running = sum(statuses[i] == "running" for i in ids)
            for cluster_id in ids:
                request(port, token, "DELETE", f"{API}/clusters/{cluster_id}")
            down = _wait_all(port, token, ids, {"stopped"}, args.timeout)
            stop.set()
            result = out.get(timeout=120)
            cpu = sum(server_process.cpu_times()[:2]) - cpu_before
            loader.join(30)
        finally:
            stop.set()
            go.set()
            server.send_signal(signal.SIGTERM)
            try:
                server.wait(60)
            except subprocess.TimeoutExpired:
                server.kill()
        if args.server_log:
            args.server_log.write_bytes((root / "server.log").read_bytes())
        stored = [row[0] for row in sqlite3.connect(root / "state" / "coiled-lab.sqlite").execute(
            "SELECT seq FROM events ORDER BY seq")]
        booted = aws.emulator.booted

    latencies = result["latencies"]
    total = sum(len(v) for v in latencies.values())
    print(f"{args.clients} REST clients (pause ~{args.interval:g} s), {args.subscribers} event subscribers, {args.clusters} clusters of "
          f"{args.workers} worker(s) on emulated EC2 ({booted} machines booted, their processes at nice {args.vm_nice}, "
          f"moto and the emulator at nice {args.aws_nice}): {running}/{args.clusters} running "
          f"after {up:.0f} s, all stopped {down:.0f} s later")
    print(f"first catalog and estimate (cold cache, before the load): {cold:.1f} s")
    print(f"{'route':34} {'requests':>9} {'p50 ms':>8} {'p95 ms':>8} {'p99 ms':>8}")
    for label, values in latencies.items():
        if values:
            print(f"{label:34} {len(values):>9} {percentile(values, 50):>8.1f} {percentile(values, 95):>8.1f} "
                  f"{percentile(values, 99):>8.1f}")
    every = [v for values in latencies.values() for v in values]
    print(f"{'all routes':34} {total:>9} {percentile(every, 50):>8.1f} {percentile(every, 95):>8.1f} "
          f"{percentile(every, 99):>8.1f}   (target p95 <= 50 ms)")
    print(f"throughput: {total / result['seconds']:.0f} requests/s over {result['seconds']:.0f} s; the server used "
          f"{cpu:.0f} CPU s ({100 * cpu / result['seconds']:.0f}% of a core), {1000 * cpu / total:.1f} ms per request "
          f"(its reconciling of the clusters included); the clients used {100 * result['cpu'] / result['seconds']:.0f}% "
          f"of a core")
    print(f"answers: {dict(sorted(result['answers'].items()))}; errors (5xx or no answer): {len(result['errors'])}")
    for line in result["errors"][:5]:
        print(f"  {line}")
    complete = sum(r == stored for r in result["received"])
    counts = sorted(len(r) for r in result["received"])
    print(f"events: {len(stored)} stored; each subscriber received {counts[0]}..{counts[-1]}; "
          f"{complete}/{len(result['received'])} subscribers have every stored event, in order")
    print(f"(one server process; python {sys.version.split()[0]}; {os.cpu_count()} cores)")


if __name__ == "__main__":
    main()
