"""POST /cleanup with a cloud that cannot be reached: that backend's error is in the answer,
and the other backends are still cleaned. The server holds AWS keys, and AWS is a port on
127.0.0.1 where nothing listens; the local backend has processes the store thinks are gone."""

from __future__ import annotations

import socket
import time

import dask.config
import pytest

from coiled_lab.control.states import State
from coiled_lab.control.store import ClusterRecord

from ..conftest import cluster_processes, wait_for

pytestmark = pytest.mark.slow


@pytest.fixture
def jp_server_config(jp_server_config, monkeypatch):
    with socket.socket() as s:  # a port that refuses connections: bound, closed, not listening
        s.bind(("127.0.0.1", 0))
        closed = s.getsockname()[1]
    for key, value in {
        "AWS_ACCESS_KEY_ID": "AKIAUNREACHABLE00001", "AWS_SECRET_ACCESS_KEY": "unreachable-secret",
        "AWS_DEFAULT_REGION": "us-east-1", "AWS_ENDPOINT_URL": f"http://127.0.0.1:{closed}",
        "AWS_CONFIG_FILE": "/dev/null", "AWS_SHARED_CREDENTIALS_FILE": "/dev/null",
        "AWS_EC2_METADATA_DISABLED": "true",
    }.items():
        monkeypatch.setenv(key, value)
    return jp_server_config


async def test_an_unreachable_cloud_does_not_stop_the_other_backends_cleanup(service, api, state_dir):
    manager = await service.manager()
    now = time.time()
    manager.store.insert_cluster(ClusterRecord(
        id="a0a0a0a0a0a0", name="on-aws", backend="aws", spec={"n_workers": 1, "region": "us-east-1"},
        status=State.stopped, target="stopped", message=None, state={}, created_at=now, updated_at=now,
        stopped_at=now))
    code, local = await api("POST", "coiled-lab/api/clusters", body={"backend": "local", "n_workers": 0})
    assert code == 201, local
    assert (await manager.wait(local["id"], ("running",), 60))["status"] == "running"
    # The store is told it stopped while its scheduler still runs (a crash in between).
    manager.store.update_cluster(local["id"], status="stopped", target="stopped")
    assert len(cluster_processes(state_dir)) == 1

    with dask.config.set({"coiled-lab.aws.max-attempts": 1}):  # refused at once, not retried for a minute
        code, reply = await api("POST", "coiled-lab/api/cleanup", body={})
    assert code == 200, reply
    assert [e["backend"] for e in reply["errors"]] == ["aws"] and "127.0.0.1" in reply["errors"][0]["error"]
    assert [(c["id"], c["backend"], len(c["instances"])) for c in reply["found"]] == [(local["id"], "local", 1)]
    wait_for(lambda: not cluster_processes(state_dir), timeout=30, what="the local cluster's processes stopped")
