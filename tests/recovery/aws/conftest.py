"""The AWS harness of tests/aws (moto, fault proxy, price list, network, EC2 emulator),
shared here rather than copied. A ``jupyter lab`` started by a test inherits its
environment: the proxy's endpoint, fake keys and the test config."""

from __future__ import annotations

from ...aws.conftest import (  # noqa: F401 - fixtures
    _no_faults_left, aws_env, bare_rootfs, emulator, moto, moto_url, network, price_list, proxy, vm_network, vpc_cidr,
)
