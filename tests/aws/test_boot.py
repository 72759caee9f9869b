"""The boot path on bare VMs: what a user's requirements do to a cluster when the image has
nothing but its distribution. One pin the index does not have is skipped and told; a
package the cluster cannot run without ends the launch in error, saying why."""

from __future__ import annotations

import dask.config
import pytest

from ..conftest import wait_for

pytestmark = pytest.mark.slow

MISSING = "coiled-lab-no-such-package==1.0"


def test_a_pin_the_index_lacks_is_skipped_and_told(aws_control, emulator, moto, tmp_path):
    requirements = tmp_path / "requirements.txt"
    requirements.write_text(f"toolz\n{MISSING}\n")
    cluster = aws_control.run(aws_control.create(
        {"backend": "aws", "n_workers": 1, "software": str(requirements), "package_sync": False}))
    final = aws_control.run(aws_control.wait(cluster["id"], timeout=180))
    assert final["status"] == "running", final.get("message")
    manager = aws_control.manager
    wait_for(lambda: any(n["kind"] == "packages" for n in aws_control.run(manager.notifications(cluster["id"]))),
             timeout=30, what="the skipped-packages notification")
    [told] = [n for n in aws_control.run(manager.notifications(cluster["id"])) if n["kind"] == "packages"]
    assert told["level"] == "warning"
    assert told["message"].startswith("1 requirement could not be installed on the cluster's VMs with Python ")
    assert MISSING in told["message"] and "not found in the package registry" in told["message"]
    boot = manager.store.get_cluster(cluster["id"]).state["boot"]
    assert [p["name"] for p in boot["phases"]][:2] == ["uv", "python"]
    aws_control.run(aws_control.stop(cluster["id"]))
    aws_control.run(aws_control.wait(cluster["id"], ("stopped",), timeout=60))
    wait_for(lambda: not moto.tagged(cluster["id"]), timeout=30, what="nothing tagged")


def test_a_required_package_that_cannot_be_installed_ends_the_launch_with_why(aws_control, emulator, moto, tmp_path):
    requirements = tmp_path / "requirements.txt"
    requirements.write_text(f"{MISSING}\n")
    marked = {"coiled-lab.required-packages": ["coiled-lab-no-such-package"]}  # as dask is: no cluster without it
    with dask.config.set(marked):  # (read at launch)
        cluster = aws_control.run(aws_control.create(
            {"backend": "aws", "n_workers": 1, "software": str(requirements), "package_sync": False}))
        final = aws_control.run(aws_control.wait(cluster["id"], ("stopped",), timeout=180))
    assert final["status"] == "error"
    assert "required package coiled-lab-no-such-package" in final["message"], final["message"]
    # The bootstrap powered the scheduler off: EC2 terminated it and its volume went.
    wait_for(lambda: not moto.tagged(cluster["id"]), timeout=30, what="nothing tagged")
