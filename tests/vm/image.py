"""The bare VM image: a Debian 12 root filesystem like Debian's EC2/GCE cloud images.

What the product's bootstrap meets on a fresh cloud VM is what decides a first boot: the
distribution's ``python3`` (3.11), ``curl`` and CA certificates, and *no* pip, venv or
compiler, nor any dask. This module builds such a root once with ``mmdebstrap`` (Debian's
own packages, ~30-40 s) and caches it outside the repository, keyed by
:data:`IMAGE_VERSION`: bump it whenever :data:`PACKAGES` or the build changes. Machines
never write to it; each one boots an overlay of its own (see :mod:`.machine`).
"""

from __future__ import annotations

import fcntl
import os
import shutil
import subprocess
import time
from pathlib import Path

from .host import HostCommandError, run

IMAGE_VERSION = "debian12-minbase-1"
SUITE = "bookworm"
# Beyond minbase (coreutils, tar, gzip, dash, apt, ...): what Debian's cloud images bring
# that the product may rely on. Deliberately absent: python3-pip, python3-venv, gcc.
PACKAGES = ("python3", "ca-certificates", "curl", "iproute2", "procps", "netbase")
MIRRORS = (
    f"deb http://deb.debian.org/debian {SUITE} main",
    f"deb http://deb.debian.org/debian {SUITE}-updates main",
    f"deb http://deb.debian.org/debian-security {SUITE}-security main",
)
# What must not be in the image, relative to its root: a test of the product is only
# worth something if the bootstrap has to bring these itself.
ABSENT = ("usr/lib/python3/dist-packages/pip", "usr/bin/pip3", "usr/lib/python3.11/ensurepip/_bundled",
          "usr/bin/gcc", "usr/bin/cc")
BUILD_TIMEOUT = 15 * 60
LOCK_TIMEOUT = 20 * 60
_HOST_TOOLS = {"mmdebstrap": "mmdebstrap", "nft": "nftables"}


def cache_dir() -> Path:
    """Where images, the emulator CA and cached package files live (``COILED_LAB_VM_CACHE``)."""
    configured = os.environ.get("COILED_LAB_VM_CACHE")
    return Path(configured) if configured else Path.home() / ".cache" / "coiled-lab" / "vm"


def ensure_tools() -> None:
    """Install ``mmdebstrap`` and ``nft`` with apt when this machine lacks them (CI starts bare)."""
    missing = [pkg for tool, pkg in _HOST_TOOLS.items() if shutil.which(tool) is None]
    if not missing:
        return
    env_ok = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for cmd, timeout in ((["apt-get", "update", "-q"], 300), (["apt-get", "install", "-y", "-q", *missing], 600)):
        proc = subprocess.run(cmd, capture_output=True, timeout=timeout, env=env_ok)
        if proc.returncode != 0:
            raise HostCommandError(f"{' '.join(cmd)}: exit {proc.returncode}: {proc.stderr.decode(errors='replace')}")


def rootfs() -> Path:
    """The cached root filesystem, built first if needed (prints one line when it builds).

    Two processes asking at once: one builds under an fcntl lock, the other waits for it
    and then finds the finished image. A build goes to a temporary directory that is
    renamed into place only when complete, so a crash never leaves a half image behind.
    """
    home = cache_dir() / IMAGE_VERSION
    root = home / "rootfs"
    if (home / "READY").exists():
        return root
    cache_dir().mkdir(parents=True, exist_ok=True)
    with open(cache_dir() / f"{IMAGE_VERSION}.lock", "w") as lock:
        _lock(lock, LOCK_TIMEOUT)
        if (home / "READY").exists():  # built by another process while we waited
            return root
        ensure_tools()
        for stale in cache_dir().glob(f"{IMAGE_VERSION}.build-*"):
            shutil.rmtree(stale, ignore_errors=True)
        if home.exists():  # an incomplete image of a crashed build: never half-used
            shutil.rmtree(home)
        building = cache_dir() / f"{IMAGE_VERSION}.build-{os.getpid()}"
        try:
            seconds = _build(building / "rootfs")
            (building / "READY").write_text(f"{IMAGE_VERSION}\n")
            os.rename(building, home)
        finally:
            shutil.rmtree(building, ignore_errors=True)
    size = _size(root)
    print(f"vm image: built Debian 12 rootfs in {seconds:.1f} s ({size / 1e6:.0f} MB), cached at {root}")
    return root


def _build(target: Path) -> float:
    started = time.monotonic()
    target.parent.mkdir(parents=True, exist_ok=True)
    cmd = ["mmdebstrap", "--variant=minbase", "--quiet", f"--include={','.join(PACKAGES)}",
           # a cloud image's first boot finds no resolver config of the build machine
           "--customize-hook=rm -f \"$1/etc/resolv.conf\" \"$1/etc/hostname\"",
           SUITE, str(target), *MIRRORS]
    try:
        run(cmd, timeout=BUILD_TIMEOUT)
    except HostCommandError as exc:
        raise HostCommandError(f"building the VM image failed: {exc}") from exc
    present = [p for p in ABSENT if os.path.lexists(target / p)]
    if present:
        raise HostCommandError(f"the VM image must not contain {', '.join(present)}")
    return time.monotonic() - started


def _lock(handle, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return
        except BlockingIOError:
            if time.monotonic() > deadline:
                raise TimeoutError(f"another process held {handle.name} for over {timeout:.0f} s")
            time.sleep(0.5)


def _size(path: Path) -> int:
    total = 0
    for dirpath, _dirs, files in os.walk(path):
        for name in files:
            try:
                total += os.lstat(os.path.join(dirpath, name)).st_size
            except OSError:
                pass
    return total
