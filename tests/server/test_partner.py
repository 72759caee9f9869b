"""dask-labextension's routes for coiled-lab's clusters (server_extension/coiled_lab_server/partner.py):
a running cluster is in its manager's list under a stable key with coiled-lab's dashboard
link; its URL check is answered here with only the plots whose paths are relative (the
answer comes from the cluster's machines); a pane's page is redirected to coiled-lab's link;
a cluster that stopped answers "no dashboard" (204); Jupyter's login guards every route,
and the kernel token opens none of them."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import dask.config
import pytest

from coiled_lab.control.states import State
from coiled_lab.control.store import ClusterRecord
from coiled_lab.spec import parse_spec
from coiled_lab_server.partner import dask_key

pytest.importorskip("dask_labextension", reason="dask-labextension is in the test extra: pip install -e .[test]")

CLUSTER = "feedfacecafe"
HOSTILE_PLOTS = {
    "Task Stream": "/individual-task-stream",
    "Cluster Map": "/statics/individual-cluster-map.html",
    "Elsewhere": "//evil.example/page",
    "Jupyter": "/../../api/contents",
    "Absolute": "http://evil.example/page",
    "Not A Path": 5,
}


@pytest.fixture
def jp_server_config(jp_server_config):
    """No reconcile pass touches the hand-made record during the test."""
    with dask.config.set({"coiled-lab.manager.check-interval": 3600}):
        yield jp_server_config


@pytest.fixture
def dashboard(jp_asyncio_loop):
    """A cluster's dashboard on 127.0.0.1 whose individual-plots.json is hostile."""
    import tornado.web

    class Plots(tornado.web.RequestHandler):
        def get(self) -> None:
            self.write(HOSTILE_PLOTS)

    async def listen():
        return tornado.web.Application([(r"/individual-plots.json", Plots)]).listen(0, "127.0.0.1")

    server = jp_asyncio_loop.run_until_complete(listen())
    yield f"http://127.0.0.1:{next(iter(server._sockets.values())).getsockname()[1]}"
    server.stop()


async def running(service, dashboard: str) -> dict[str, Any]:
    manager = await service.manager()
    now = time.time()
    manager.store.insert_cluster(ClusterRecord(
        id=CLUSTER, name="listed", backend="local", spec=parse_spec({"n_workers": 1}).public(), status=State.running,
        target="running", message=None, state={"dashboard": dashboard}, created_at=now, updated_at=now,
    ))
    return await manager.get(CLUSTER)


async def test_dask_labextension_lists_and_reaches_a_coiled_lab_cluster(
        service, api, jp_fetch, jp_serverapp, jp_base_url, dashboard):
    from dask_labextension.manager import manager as dask_manager

    partner = next(iter(jp_serverapp.extension_manager.extension_apps["coiled_lab_server"])).partner
    record = await running(service, dashboard)
    partner.update(record)  # what the manager's state events do
    key = dask_key(CLUSTER)
    (model,) = [m for m in dask_manager.list_clusters() if m["id"] == key]
    assert model["name"] == "listed"
    assert model["dashboard_link"] == f"{jp_base_url}coiled-lab/clusters/{CLUSTER}/dashboard/"

    code, plots = await api("GET", "dask/dashboard", key, "individual-plots.json")
    assert code == 200, plots
    assert plots == {"Task Stream": "/individual-task-stream", "Cluster Map": "/statics/individual-cluster-map.html"}
    pane = await jp_fetch("dask/dashboard", key, "individual-task-stream", params={"a": "1"},
                          follow_redirects=False, raise_error=False)
    assert pane.code == 302
    assert pane.headers["Location"] == f"{jp_base_url}coiled-lab/clusters/{CLUSTER}/dashboard/individual-task-stream?a=1"

    # Its routes are Jupyter's: no login, or the kernel token, opens none (a page is sent to
    # the login page, as by dask-labextension's own route).
    routes = [("dask/dashboard", key, "individual-plots.json"), ("dask/dashboard", key, "individual-task-stream"),
              ("coiled-lab/no-live-cluster/individual-plots.json",)]
    for headers in ({"Authorization": ""}, {"Authorization": f"coiled-lab {service.token}"}):
        for parts in routes:
            answer = await jp_fetch(*parts, headers=headers, follow_redirects=False, raise_error=False)
            refused = answer.code in (401, 403) or (answer.code == 302 and "/login" in answer.headers["Location"])
            assert refused, (parts, headers, answer.code, answer.headers.get("Location"))

    # ADAPT: the bounds go to coiled-lab's control plane; one beyond a limit is refused
    # there and told as the cluster's notification (nothing else changes).
    adapted = dask_manager.adapt_cluster(key, 1, 100)
    assert adapted["adapt"] == {"minimum": 1, "maximum": 100}
    await asyncio.gather(*partner._changes)
    manager = await service.manager()
    told = [n["message"] for n in await manager.notifications(CLUSTER) if n["kind"] == "adaptive"]
    assert len(told) == 1 and "ADAPT in dask-labextension was refused" in told[0] and "at most 64" in told[0]
    assert manager.store.get_cluster(CLUSTER).spec == parse_spec({"n_workers": 1}).public()

    # Stopping: it leaves the list, and a check still on its way is told "no dashboard".
    partner.update({**record, "status": "stopping", "target": "stopped"})
    assert key not in {m["id"] for m in dask_manager.list_clusters()}
    code, body = await api("GET", "dask/dashboard", key, "individual-plots.json")
    assert (code, body) == (204, None)
    code, body = await api("GET", "coiled-lab/no-live-cluster/individual-plots.json")
    assert (code, body) == (204, None)
