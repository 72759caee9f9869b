"""Bare-VM emulation for the cloud emulators' tests.

A VM here is the cached Debian 12 cloud-like image (:mod:`.image`) booted in namespaces of
its own (:mod:`.machine`), on an emulated cloud network with VPCs, public addresses,
security groups, a metadata service and an egress proxy with a package cache
(:mod:`.network`, :mod:`.proxy`). Root only; no traffic leaves this machine except to the
package registries, through the proxy.
"""

from .image import IMAGE_VERSION, cache_dir, ensure_tools, rootfs
from .machine import VM
from .network import Network, Rule

__all__ = ["IMAGE_VERSION", "VM", "Network", "Rule", "cache_dir", "ensure_tools", "rootfs"]
