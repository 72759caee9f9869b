"""The boot path on bare GCE VMs (as tests/aws/test_boot.py on EC2): a requirement the index
lacks is skipped and told; a required one ends the launch in error, saying why."""

from __future__ import annotations

import dask.config
import pytest

from ..conftest import wait_for
from .conftest import labelled

pytestmark = pytest.mark.slow

MISSING = "coiled-lab-no-such-package==1.0"


def create(control, tmp_path, requirements: str) -> dict:
    path = tmp_path / "requirements.txt"
    path.write_text(requirements)
    return control.run(control.create({"backend": "gcp", "n_workers": 1, "software": str(path),
                                       "package_sync": False}))


def test_a_pin_the_index_lacks_is_skipped_and_told(gcp_control, emulator, fake, tmp_path):
    cluster = create(gcp_control, tmp_path, f"toolz\n{MISSING}\n")
    final = gcp_control.run(gcp_control.wait(cluster["id"], timeout=180))
    assert final["status"] == "running", final.get("message")
    manager = gcp_control.manager
    wait_for(lambda: any(n["kind"] == "packages" for n in gcp_control.run(manager.notifications(cluster["id"]))),
             timeout=30, what="the skipped-packages notification")
    [told] = [n for n in gcp_control.run(manager.notifications(cluster["id"])) if n["kind"] == "packages"]
    assert told["message"].startswith("1 requirement could not be installed on the cluster's VMs with Python ")
    assert MISSING in told["message"]
    gcp_control.run(gcp_control.stop(cluster["id"]))
    gcp_control.run(gcp_control.wait(cluster["id"], ("stopped",), timeout=60))
    wait_for(lambda: not labelled(fake, cluster["id"], alive=False), timeout=30, what="no VM left")


def test_a_required_package_that_cannot_be_installed_ends_the_launch_with_why(gcp_control, emulator, fake, tmp_path):
    with dask.config.set({"coiled-lab.required-packages": ["coiled-lab-no-such-package"]}):  # read at launch
        cluster = create(gcp_control, tmp_path, f"{MISSING}\n")
        final = gcp_control.run(gcp_control.wait(cluster["id"], ("stopped",), timeout=180))
    assert final["status"] == "error"
    assert "required package coiled-lab-no-such-package" in final["message"], final["message"]
    wait_for(lambda: not labelled(fake, cluster["id"], alive=False), timeout=30, what="no VM left")
