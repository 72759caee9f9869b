"""The VM's Cloud Logging shipper against the fake: numbered lines arrive once each, in
order, labelled with the cluster, through throttling and an outage of entries.write."""

from __future__ import annotations

import datetime

from coiled_lab.bootstrap.cloudlogging import CloudLoggingShipper

from .fakegcp import FakeGCP


def test_lines_arrive_in_order_once_each_through_throttling_and_an_outage():
    fake = FakeGCP()
    try:
        faults = [fake.fail("logging.entries.write", 429, 2), fake.fail("logging.entries.write", 503, 3)]
        shipper = CloudLoggingShipper(
            lambda: "vm-token", fake.url, "projects/p/logs/coiled-lab",
            {"type": "gce_instance", "labels": {"project_id": "p", "zone": "us-central1-a", "instance_id": "1"}},
            {"coiled-lab-cluster": "c1", "coiled-lab-role": "worker", "coiled-lab-instance": "vm-1"},
            interval=0.05, max_backoff=0.2)
        for i in range(12_000):  # more than one batch (10,000 entries at most)
            shipper.write(f"line {i}")
        shipper.start()
        shipper.close(timeout=30)
        assert [f[0] for f in faults] == [2, 3]
        assert [e["textPayload"] for e in fake.entries] == [f"line {i}" for i in range(12_000)]
        assert {e["labels"]["coiled-lab-cluster"] for e in fake.entries} == {"c1"}
        assert {e["_token"] for e in fake.entries} == {"vm-token"}
        stamps = [datetime.datetime.fromisoformat(e["timestamp"].replace("Z", "+00:00")) for e in fake.entries]
        assert stamps == sorted(stamps)
        assert all(len(c.body["entries"]) <= 10_000 for c in fake.calls("logging.entries.write"))
        assert shipper.sent == 12_000 and shipper.dropped_total == 0
    finally:
        fake.close()
