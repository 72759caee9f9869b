"""A cluster name that is another cluster's id is refused, live or stopped: a lookup by id
wins, so such a name would point DELETE (and every other verb) at the other cluster."""

from __future__ import annotations

import time

from coiled_lab.control.states import State
from coiled_lab.control.store import ClusterRecord


async def test_a_name_equal_to_any_cluster_id_is_refused(service, api):
    manager = await service.manager()
    now = time.time()
    manager.store.insert_cluster(ClusterRecord(
        id="0123456789ab", name="stopped-one", backend="local", spec={"n_workers": 0}, status=State.stopped,
        target="stopped", message=None, state={}, created_at=now, updated_at=now, stopped_at=now))
    code, live = await api("POST", "coiled-lab/api/clusters", body={"backend": "local", "n_workers": 0})
    assert code == 201, live
    try:
        for taken in ("0123456789ab", live["id"]):
            code, reply = await api("POST", "coiled-lab/api/clusters",
                                    body={"backend": "local", "n_workers": 0, "name": taken})
            assert code == 400 and reply["field"] == "name" and "id of another cluster" in reply["error"], reply
        assert sorted(r.id for r in manager.store.list_clusters()) == sorted(["0123456789ab", live["id"]])
        code, found = await api("GET", "coiled-lab/api/clusters", live["id"])
        assert code == 200 and found["name"] == live["name"]  # by id
    finally:
        await manager.stop(live["id"])
        assert (await manager.wait(live["id"], ("stopped",), 60))["status"] == "stopped"
