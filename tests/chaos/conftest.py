"""The AWS harness of tests/aws (moto, fault proxy, price list, network, EC2 emulator),
shared here rather than copied, plus what chaos cycles need on top: short AWS read
timeouts so a ``timeout`` fault costs seconds, for this process and the manager's (long
enough that moto itself, on two busy cores, does not time out)."""

from __future__ import annotations

import pytest

from ..aws.conftest import (  # noqa: F401 - fixtures
    _no_faults_left, aws_env, bare_rootfs, emulator, moto, moto_url, network, price_list, proxy, vm_network, vpc_cidr,
)
from .clouds import EmulatedAWS

READ_TIMEOUT = 8.0


@pytest.fixture
def aws_cloud(state_dir, emulator, proxy, moto, network, monkeypatch):  # noqa: F811
    monkeypatch.setenv("DASK_COILED_LAB__AWS__READ_TIMEOUT", str(READ_TIMEOUT))
    return EmulatedAWS(proxy, emulator, moto, network["subnets"], READ_TIMEOUT)
