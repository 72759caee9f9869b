"""The restart test of tests/recovery on the EC2 emulator: a ``jupyter lab`` whose clusters
run on "EC2" (moto + the emulator) SIGKILLed while one runs, one provisions and one
stops, then started again on the same state dir. Instances are counted by tag in moto,
past the proxy: the running cluster keeps its instances, the provisioning one ends with
one scheduler and its workers (nothing launched twice), the stopping one leaves nothing.
"""

from __future__ import annotations

import pytest

from coiled_lab.control.store import Store

from ...conftest import wait_for
from ...ui.lab import JupyterLab

pytestmark = pytest.mark.slow

API = "coiled-lab/api/clusters"


@pytest.fixture
def lab(tmp_path, emulator):
    server = JupyterLab(tmp_path / "lab")
    server.start()
    yield server
    server.close()


def status(store: Store, cluster_id: str) -> str:
    return str(store.get_cluster(cluster_id).status)


def live(moto, cluster_id: str) -> dict[str, str]:
    """Instance id -> role of the cluster's pending or running instances."""
    return {i["InstanceId"]: next(t["Value"] for t in i["Tags"] if t["Key"] == "coiled-lab:role")
            for i in moto.instances(cluster_id)}


def test_server_killed_with_clusters_on_ec2(lab, moto):
    store = Store(lab.state_dir / "coiled-lab.sqlite")
    try:
        # -- running: adopted with the same instances --------------------------------------
        code, a = lab.api("POST", API, {"backend": "aws", "name": "ec2-running", "n_workers": 1})
        assert code == 201, a
        wait_for(lambda: status(store, a["id"]) == "running", timeout=120, what="running")
        before = live(moto, a["id"])
        assert sorted(before.values()) == ["scheduler", "worker"]
        lab.kill()
        lab.start()
        wait_for(lambda: lab.api("GET", f"{API}/{a['id']}")[1]["workers"]["ready"] == 1, timeout=60,
                 what="the adopted cluster's worker seen by the new server")
        assert status(store, a["id"]) == "running"
        assert live(moto, a["id"]) == before
        assert sorted(moto.all_instances(a["id"])) == sorted(before)  # none launched, none lost

        # -- provisioning: finished, nothing launched twice --------------------------------
        code, b = lab.api("POST", API, {"backend": "aws", "name": "ec2-starting", "n_workers": 2})
        assert code == 201, b
        wait_for(lambda: moto.instances(b["id"], "scheduler") and status(store, b["id"]) == "provisioning",
                 timeout=60, interval=0.05, what="the scheduler launched, the cluster still provisioning")
        lab.kill()
        assert status(store, b["id"]) == "provisioning"
        lab.start()
        wait_for(lambda: status(store, b["id"]) == "running", timeout=120, what="the half-made cluster running")
        assert sorted(live(moto, b["id"]).values()) == ["scheduler", "worker", "worker"]

        # -- stopping: stopped, nothing left -----------------------------------------------
        code, answer = lab.api("DELETE", f"{API}/{a['id']}")
        lab.kill()
        assert code == 202 and answer["status"] == "stopping"
        lab.start()
        wait_for(lambda: status(store, a["id"]) == "stopped", timeout=120, what="stopped")
        wait_for(lambda: not moto.tagged(a["id"]), timeout=60, what=f"nothing tagged with {a['id']}")
        assert sorted(live(moto, b["id"]).values()) == ["scheduler", "worker", "worker"]  # untouched

        lab.api("DELETE", f"{API}/{b['id']}")
        wait_for(lambda: status(store, b["id"]) == "stopped", timeout=120, what="stopped")
        wait_for(lambda: not moto.tagged(b["id"]), timeout=60, what=f"nothing tagged with {b['id']}")
    finally:
        store.close()
