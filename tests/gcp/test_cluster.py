"""A "GCE" cluster end to end: launched through the manager into the fake, booted by the
GCE emulator, reached over TLS, logging to the fake's Cloud Logging, scaled, stopped."""

from __future__ import annotations

import ipaddress
import socket

import pytest
from distributed import Client

from coiled_lab import Cluster
from coiled_lab.tls import TLSMaterial

from ..conftest import wait_for
from .conftest import labelled

pytestmark = pytest.mark.slow


def test_cluster_on_gce(gcp_control, emulator, fake, gcp_env, subnet_cidr):
    bulk_before = fake.count("compute.regionInstances.bulkInsert")
    with Cluster(n_workers=2, backend="gcp", control=gcp_control, timeout=180) as cluster:
        cluster_id = cluster.cluster_id
        (scheduler,) = labelled(fake, cluster_id, "scheduler")
        # This server is outside the network: it reaches the scheduler at its external
        # address, and its internal one (where the workers reach it) not at all.
        interface = scheduler["networkInterfaces"][0]
        assert cluster.scheduler_address == f"tls://{interface['accessConfigs'][0]['natIP']}:8786"
        assert ipaddress.ip_address(interface["networkIP"]) in ipaddress.ip_network(subnet_cidr)
        with pytest.raises(OSError):
            socket.create_connection((interface["networkIP"], 8786), timeout=2).close()
        workers = labelled(fake, cluster_id, "worker")
        assert len(workers) == 2
        assert {w["zone"] for w in workers} == {scheduler["zone"]}
        for vm in (scheduler, *workers):
            assert vm["labels"]["coiled-lab-cluster"] == cluster_id
            assert vm["serviceAccounts"][0]["email"] == "coiled-lab-vm@coiled-lab-test.iam.gserviceaccount.com"
            script = next(i["value"] for i in vm["metadata"]["items"] if i["key"] == "startup-script")
            assert "PRIVATE KEY" not in script.split("COILED_LAB_ARCHIVE")[0]
            assert gcp_env.read_text() not in script and "private_key" not in script
        # Only the scheduler is opened to this machine, by its ingress tag.
        assert any(t.startswith("coiled-lab-in-") for t in scheduler["tags"]["items"])
        assert not any(t.startswith("coiled-lab-in-") for w in workers for t in w["tags"]["items"])

        with Client(cluster) as client:
            assert client.submit(lambda x: x * 2, 21).result() == 42
            # The workers are named after their VMs: that is how the manager matches them.
            names = {w["name"] for w in client.scheduler_info()["workers"].values()}
            assert names == {w["name"] for w in workers}

            cluster.scale(3)
            client.wait_for_workers(3, timeout=60)
            wait_for(lambda: len(labelled(fake, cluster_id, "worker")) == 3, what="3 worker VMs")
            cluster.scale(1)
            wait_for(lambda: len(client.scheduler_info()["workers"]) == 1, timeout=60, what="1 worker")
            wait_for(lambda: len(labelled(fake, cluster_id, "worker", alive=False)) == 1, what="1 worker VM")
            assert client.submit(lambda: 1).result() == 1

        # Only the cluster's own certificate opens it.
        with pytest.raises((OSError, TimeoutError)):
            Client(cluster.scheduler_address, security=TLSMaterial.generate("other").security(), timeout=3)

        # Every VM writes entries labelled with the cluster; logs() reads them in one entries.list.
        writers = {e["labels"]["coiled-lab-instance"] for e in fake.entries
                   if e["labels"].get("coiled-lab-cluster") == cluster_id}
        assert {scheduler["name"], *(w["name"] for w in workers)} <= writers
        # ... with their own service account's token, never the admin's.
        assert {e["_token"] for e in fake.entries} <= emulator.tokens()
        before = fake.count("logging.entries.list")
        records = gcp_control.run(gcp_control.logs(cluster_id, limit=None))
        assert fake.count("logging.entries.list") == before + 1
        assert {"scheduler", "worker"} <= {r["role"] for r in records}
        assert any("Scheduler at:" in r["message"] for r in records)
        assert [r["time"] for r in records] == sorted(r["time"] for r in records)

    assert cluster.record["status"] == "stopped"
    wait_for(lambda: not labelled(fake, cluster_id, alive=False), timeout=30, what=f"no VM labelled {cluster_id}")
    wait_for(lambda: not [m for m in emulator.running() if m in {w["name"] for w in workers}],
             what="the emulated machines to end")

    # One bulkInsert per launch of workers: the first two, the third.
    bulks = fake.calls("compute.regionInstances.bulkInsert")[bulk_before:]
    assert [int(c.body["count"]) for c in bulks] == [2, 1]
    assert fake.count("compute.instances.insert") >= 1


def test_spot_preemption_retires_the_worker_and_it_is_replaced(gcp_control, emulator, fake):
    cluster = gcp_control.run(gcp_control.create({"backend": "gcp", "n_workers": 2, "spot_policy": "spot"}))
    assert gcp_control.run(gcp_control.wait(cluster["id"], timeout=120))["status"] == "running"
    workers = labelled(fake, cluster["id"], "worker")
    assert {w["scheduling"]["provisioningModel"] for w in workers} == {"SPOT"}
    victim = workers[0]["name"]
    with Cluster(name=cluster["name"], control=gcp_control, shutdown_on_close=False) as attached, \
            Client(attached) as client:
        addresses = {w["name"]: a for a, w in client.scheduler_info()["workers"].items()}
        data = client.submit(lambda: list(range(1000)), workers=[addresses[victim]], pure=False)
        assert len(data.result()) == 1000

        emulator.preempt(victim)
        # Retired gracefully: its data moved to the other worker before it left.
        wait_for(lambda: victim not in {w["name"] for w in client.scheduler_info()["workers"].values()},
                 timeout=60, what="the preempted worker to leave")
        assert len(data.result()) == 1000
        assert data.key in {k for keys in client.has_what().values() for k in keys}
        client.wait_for_workers(2, timeout=90)  # the manager replaces it
    # The powered-off VM is deleted, not left stopped.
    wait_for(lambda: victim not in {v["name"] for v in labelled(fake, cluster["id"], alive=False)}, timeout=30,
             what="the preempted VM deleted")
    records = gcp_control.run(gcp_control.logs(cluster["id"], instance=victim, limit=None))
    assert any("spot interruption notice preempted" in r["message"] for r in records)
    gcp_control.run(gcp_control.stop(cluster["id"]))
    gcp_control.run(gcp_control.wait(cluster["id"], ("stopped",), 60))
    wait_for(lambda: not labelled(fake, cluster["id"], alive=False), timeout=30, what="no VM labelled")
