"""Accrued cost from real launch/terminate times: per-second billing, 60 s minimum."""

import asyncio

import pytest

from coiled_lab.control.store import Instance
from coiled_lab.pricing import accrued, estimate, extrapolate
from coiled_lab.spec import parse_spec


def test_per_second_billing_with_a_minute_minimum():
    instances = [
        Instance("a", "scheduler", launched_at=0, terminated_at=3600),  # one hour
        Instance("b", "worker", launched_at=100, terminated_at=110),    # 10 s, billed 60 s
        Instance("c", "worker", launched_at=0),                          # still running
    ]
    cost = accrued(instances, lambda i: 0.36, now=1800)
    assert cost["accrued"] == pytest.approx(0.36 + 0.36 * 60 / 3600 + 0.36 * 1800 / 3600)
    assert cost["per_hour"] == pytest.approx(0.36)  # only c still runs
    later = extrapolate(cost, now=1800 + 3600)
    assert later["accrued"] == pytest.approx(cost["accrued"] + 0.36)


def test_local_clusters_cost_nothing():
    est = asyncio.run(estimate(parse_spec(n_workers=8)))
    assert est["per_hour"] == 0 and est["currency"] == "USD" and est["n_workers"] == 8


def test_cost_is_kept_after_stop(control, state_dir):
    cluster = control.run(control.create({"n_workers": 1}))
    control.run(control.wait(cluster["id"], timeout=60))
    control.run(control.stop(cluster["id"]))
    final = control.run(control.wait(cluster["id"], ("stopped",), 30))
    assert final["cost"]["accrued"] == 0.0 and final["cost"]["per_hour"] == 0.0
    listed = [c for c in control.run(control.list()) if c["id"] == cluster["id"]]
    assert listed[0]["cost"] == final["cost"]


def test_list_json_matches_list_and_follows_changes(control, state_dir):
    import json

    from coiled_lab.control.states import State

    manager = control.manager
    cluster = control.run(control.create({"n_workers": 0, "name": "listed"}))
    control.run(control.wait(cluster["id"], timeout=60))
    control.run(control.stop(cluster["id"]))
    control.run(control.wait(cluster["id"], ("stopped",), 30))

    def both():
        as_list = control.run(manager.list())
        encoded = json.loads(control.run(manager.list_json()))
        for a, b in zip(as_list, encoded):  # live entries move with the clock; compare the rest
            a.pop("cost", None), b.pop("cost", None)
        return as_list, encoded

    first, encoded = both()
    assert first == encoded and encoded[0]["status"] == "stopped"
    manager.store.update_cluster(cluster["id"], message="changed after the first answer", status=State.error)
    again, encoded = both()
    assert again == encoded and encoded[0]["message"] == "changed after the first answer"
