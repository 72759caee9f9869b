"""The GCP harness of tests/gcp (fake Google Cloud REST server, network, GCE emulator),
shared here rather than copied; its fixture names override the AWS ones of tests/chaos."""

from __future__ import annotations

import pytest

from ...gcp.conftest import (  # noqa: F401
    _no_faults_left, bare_rootfs, emulator, fake, gcp_env, network, subnet_cidr, vm_network,
)
from ..clouds import EmulatedGCE


@pytest.fixture
def gce_cloud(state_dir, emulator, fake, network, monkeypatch):  # noqa: F811
    monkeypatch.setenv("COILED_LAB_TEST_GOOGLE_OFFLINE", "1")  # for the manager's processes
    return EmulatedGCE(fake, emulator)
