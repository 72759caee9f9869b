"""Correctness under load (timings are benchmarks/load.py's business): 40 REST clients and
10 event subscribers while 3 local clusters start and stop. No request fails with a 5xx,
and every subscriber sees every state event of every cluster, in order, exactly as the
store recorded them."""

from __future__ import annotations

import asyncio
import json
import random

import pytest

pytestmark = pytest.mark.slow

CLIENTS, SUBSCRIBERS, CLUSTERS = 40, 10, 3
ROUTES = [
    ("GET", "clusters", None, {"live": "true"}),
    ("GET", "clusters/{id}", None, None),
    ("GET", "clusters/{id}/connection", None, None),
    ("GET", "clusters/{id}/notifications", None, None),
    ("GET", "clusters/{id}/usage", None, None),
    ("GET", "clusters/{id}/logs", None, {"limit": "50"}),
    ("POST", "estimate", {"backend": "local", "n_workers": 2}, None),
    ("GET", "catalog", None, {"backend": "local"}),
    ("GET", "defaults", None, None),
]


async def test_clients_and_subscribers_while_clusters_start(service, api, jp_ws_fetch):
    manager = await service.manager()
    sockets = [await jp_ws_fetch("coiled-lab", "api", "events") for _ in range(SUBSCRIBERS)]
    seen: list[list[dict]] = [[] for _ in sockets]

    async def subscriber(i: int) -> None:
        while (message := await sockets[i].read_message()) is not None:
            seen[i].append(json.loads(message))

    ids: list[str] = []
    answers: dict[tuple[str, int], int] = {}
    done = asyncio.Event()

    async def client(rng: random.Random) -> None:
        while not done.is_set():
            method, path, body, query = rng.choice(ROUTES)
            cluster = rng.choice(ids) if ids else "none"
            code, reply = await api(method, "coiled-lab/api", *path.format(id=cluster).split("/"),
                                    body=body, params=query)
            assert code < 500, (method, path, code, reply)
            answers[(path, code)] = answers.get((path, code), 0) + 1

    listening = [asyncio.ensure_future(subscriber(i)) for i in range(SUBSCRIBERS)]
    clients = [asyncio.ensure_future(client(random.Random(i))) for i in range(CLIENTS)]
    try:
        for n in range(CLUSTERS):
            code, record = await api("POST", "coiled-lab/api/clusters", body={"backend": "local", "n_workers": 1,
                                                                              "name": f"load-{n}"})
            assert code == 201, record
            ids.append(record["id"])
        for cluster_id in ids:
            assert (await manager.wait(cluster_id, ("running",), 120))["status"] == "running"
        for cluster_id in ids:
            code, _ = await api("DELETE", "coiled-lab/api/clusters", cluster_id)
            assert code == 202
        for cluster_id in ids:
            assert (await manager.wait(cluster_id, ("stopped",), 120))["status"] == "stopped"
    finally:
        done.set()
        await asyncio.gather(*clients)

    stored = {cid: [(e["seq"], e["data"]["status"]) for e in manager.store.events(cid) if e["kind"] == "state"]
              for cid in ids}
    for cid, events in stored.items():
        assert [s for _, s in events][0] == "pending" and events[-1][1] == "stopped", events

    def complete(i: int) -> bool:
        return all((stored[cid][-1][0], "stopped") in [(e["seq"], e["data"].get("status")) for e in seen[i]
                                                      if e["cluster_id"] == cid] for cid in ids)

    async def until_complete() -> None:
        while not all(complete(i) for i in range(SUBSCRIBERS)):
            await asyncio.sleep(0.05)

    await asyncio.wait_for(until_complete(), 30)  # the last events are on their way
    for ws in sockets:
        ws.close()
    await asyncio.gather(*listening)

    for i in range(SUBSCRIBERS):
        for cid in ids:
            got = [(e["seq"], e["data"]["status"]) for e in seen[i] if e["cluster_id"] == cid and e["kind"] == "state"]
            assert got == stored[cid], (i, cid, got, stored[cid])
    served = {path for path, code in answers if code < 400}
    assert served == {path for _, path, _, _ in ROUTES}, answers  # every route was really exercised
