"""A VM's boot report (the scheduler's ``coiled_lab_lifetime`` answer, ``"boot"``): the
phases kept in the cluster's state, and one notification naming every requirement the VMs
could not install."""

from __future__ import annotations

from typing import Any, Optional

import dask.config
import pytest

from coiled_lab.control import notifications
from coiled_lab.control.inprocess import InProcessControl
from coiled_lab.control.manager import ClusterManager
from coiled_lab.control.schedulers import SchedulerLinks
from coiled_lab.spec import ClusterSpecError

from .conftest import cluster_processes, wait_for

BOOT = {
    "python": "3.11.2",
    "python_source": "uv-managed CPython 3.11.2",
    "phases": [{"name": "python", "seconds": 2.1}, {"name": "packages", "seconds": 14.5},
               {"name": "dask", "seconds": 1.2}],
    "installed": 187,
    "skipped": [{"requirement": "foo==1.0", "reason": "no wheel for Python 3.11 and no sdist"},
                {"requirement": "bar @ https://example.org/bar-2.0.tar.gz",
                 "reason": "building the wheel failed: gcc not found\nTraceback (most recent call last): ..."}],
}


def test_one_notice_names_every_skipped_requirement_and_why():
    (notice,) = notifications.skipped_packages(notifications.boot_summary(BOOT))
    assert (notice.kind, notice.level, notice.key) == ("packages", "warning", "packages:skipped")
    assert notice.message == (
        "2 requirements could not be installed on the cluster's VMs with Python 3.11.2 and were skipped: "
        "foo==1.0 (no wheel for Python 3.11 and no sdist); "
        "bar @ https://example.org/bar-2.0.tar.gz (building the wheel failed: gcc not found)")
    assert notifications.skipped_packages({**BOOT, "skipped": []}) == []
    assert notifications.skipped_packages(None) == []


def test_boot_summary_keeps_the_known_fields_in_their_types():
    kept = notifications.boot_summary({**BOOT, "secret": "x", "phases": [*BOOT["phases"], {"name": "bad"},
                                                                       {"name": "nan", "seconds": float("nan")}]})
    assert set(kept) == {"python", "python_source", "phases", "installed", "skipped"}
    assert kept["phases"] == BOOT["phases"] and kept["installed"] == 187
    assert kept["skipped"][1]["reason"] == "building the wheel failed: gcc not found"  # one line
    many = notifications.boot_summary({"skipped": [{"requirement": f"p{i}", "reason": "r"} for i in range(600)]})
    assert len(many["skipped"]) == notifications.MAX_SKIPPED and many["skipped_more"] == 100
    assert "and 100 more" in notifications.skipped_packages(many)[0].message
    assert notifications.boot_summary({"installed": True, "phases": "x", "skipped": None}) == {}
    # As it arrives from the scheduler: distributed's messages decode arrays as tuples.
    assert notifications.boot_summary({**BOOT, "phases": tuple(BOOT["phases"]),
                                       "skipped": tuple(BOOT["skipped"])}) == notifications.boot_summary(BOOT)


class BootReportingLinks(SchedulerLinks):
    """The real scheduler calls; the lifetime answer carries a boot report, as a cloud VM's
    bootstrap gives it."""

    boot: Optional[dict[str, Any]] = BOOT

    async def identity(self, cluster_id, address):
        info = await super().identity(cluster_id, address)
        if info is not None:
            info["coiled_lab_lifetime"] = {**(info.get("coiled_lab_lifetime") or {}), "boot": self.boot}
        return info


class BootReportingManager(ClusterManager):
    """The real manager and local backend, with :class:`BootReportingLinks`."""

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.schedulers = BootReportingLinks(lambda cluster_id: self._tls(self.store.get_cluster(cluster_id)))


def test_the_manager_keeps_the_boot_phases_and_tells_skipped_packages_once(state_dir):
    manager = BootReportingManager(state_dir)
    control = InProcessControl(manager)
    try:
        cluster = control.run(control.create({"n_workers": 1}))
        assert control.run(control.wait(cluster["id"], timeout=60))["status"] == "running"
        control.run(control.scale(cluster["id"], 2))  # more passes see the same report
        assert control.run(control.wait(cluster["id"], timeout=60))["workers"]["ready"] == 2
        rec = manager.store.get_cluster(cluster["id"])
        assert rec.state["boot"] == notifications.boot_summary(BOOT)
        assert rec.state["boot"]["phases"][0] == {"name": "python", "seconds": 2.1}
        assert "boot" not in (rec.state["observed"]["lifetime"] or {})  # the clocks stay clocks
        told = [n for n in control.run(manager.notifications(cluster["id"])) if n["kind"] == "packages"]
        assert len(told) == 1
        assert told[0]["level"] == "warning" and "foo==1.0 (no wheel" in told[0]["message"]
        assert "bar @ https://example.org/bar-2.0.tar.gz (building the wheel failed" in told[0]["message"]
        control.run(control.stop(cluster["id"]))
        control.run(control.wait(cluster["id"], ("stopped",), 30))
    finally:
        control.close()


def test_a_cluster_that_asks_for_every_package_ends_in_error_when_the_vms_skip_some(state_dir):
    """package_sync_fail_on='warning-or-higher': what the VMs report they could not install
    ends the cluster in error, naming the packages, and nothing is left running."""
    manager = BootReportingManager(state_dir)
    control = InProcessControl(manager)
    try:
        cluster = control.run(control.create({"n_workers": 1, "package_sync_fail_on": "warning-or-higher"}))
        final = control.run(control.wait(cluster["id"], ("stopped",), 60))
        assert final["status"] == "error"
        assert "foo==1.0 (no wheel" in final["message"] and "package_sync_fail_on asks for every package" in \
            final["message"]
        wait_for(lambda: not cluster_processes(state_dir), timeout=30, what="no dask process left")
    finally:
        control.close()


def test_a_refused_create_leaves_nothing_behind(state_dir, tmp_path):
    """A cloud spec whose requirements file a VM cannot install, or whose Python is not
    supported, is refused before a record, a cluster directory or any cloud call."""
    from coiled_lab.backends.aws import AWSBackend

    class NoCloud(AWSBackend):
        async def check_access(self, region=None):
            raise AssertionError("asked for credentials after a refusal")

    bad = tmp_path / "requirements.txt"
    bad.write_text("-e ./mine\n")
    manager = ClusterManager(state_dir, backends={"aws": NoCloud(session=object())})
    control = InProcessControl(manager)
    try:
        for spec, field in (({"software": str(bad), "package_sync": False}, "software"),
                            ({"software": "ghcr.io/me/image:1", "package_sync": False}, "software"),
                            ({"python_version": "3.9"}, "python_version")):
            with pytest.raises(ClusterSpecError) as info:
                control.run(control.create({"backend": "aws", **spec}))
            assert info.value.field == field
            with pytest.raises(ClusterSpecError) as info:
                control.run(manager.estimate({"backend": "aws", **spec}))
            assert info.value.field == field
        assert manager.store.list_clusters() == []
        assert not (state_dir / "clusters").exists() or not any((state_dir / "clusters").iterdir())
    finally:
        control.close()


def test_the_python_of_a_new_cluster_is_fixed_at_creation(state_dir):
    from coiled_lab.spec import running_python

    manager = ClusterManager(state_dir)
    control = InProcessControl(manager)
    try:
        with dask.config.set({"coiled-lab.cluster.python-version": "3.10" if running_python() != "3.10" else "3.12"}):
            cluster = control.run(control.create({"n_workers": 0}))  # a default for clouds: not the local one
        assert cluster["spec"]["python_version"] == running_python()
        control.run(control.stop(cluster["id"]))
        control.run(control.wait(cluster["id"], ("stopped",), 30))
    finally:
        control.close()
