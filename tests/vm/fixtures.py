"""Session fixtures for tests that boot emulated VMs; import them into a conftest::

    from ..vm.fixtures import bare_rootfs, vm_network  # noqa: F401

However many conftests import them, one :class:`~.network.Network` serves the whole
session (the first user makes it, the last one closes it; ``atexit`` is the backstop).
"""

from __future__ import annotations

import os
import shutil
import threading
from pathlib import Path
from typing import Iterator, Optional

import pytest

from .image import rootfs
from .network import Network

_lock = threading.Lock()
_shared: Optional[Network] = None
_users = 0


def require_root() -> None:
    """Skip unless this process may make namespaces (root, with ``ip`` and ``unshare``)."""
    if os.geteuid() != 0:
        pytest.skip("emulated VMs need root (namespaces, mounts, nftables)")
    for tool in ("ip", "unshare", "nsenter"):
        if shutil.which(tool) is None:
            pytest.skip(f"emulated VMs need {tool}")


def acquire_network() -> Network:
    global _shared, _users
    with _lock:
        if _shared is None:
            _shared = Network()  # sweeps a crashed run's leftovers first
        _users += 1
        return _shared


def release_network() -> None:
    global _shared, _users
    with _lock:
        _users -= 1
        if _users == 0 and _shared is not None:
            _shared.close()
            _shared = None


@pytest.fixture(scope="session")
def bare_rootfs() -> Path:
    """The cached bare Debian 12 image (built on first use, ~30-40 s)."""
    require_root()
    return rootfs()


@pytest.fixture(scope="session")
def vm_network() -> Iterator[Network]:
    """The session's emulated cloud network."""
    require_root()
    network = acquire_network()
    try:
        yield network
    finally:
        release_network()
