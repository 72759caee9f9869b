"""Fixtures of the VM emulation; other test packages import them from :mod:`.fixtures`."""

from .fixtures import bare_rootfs, vm_network  # noqa: F401
