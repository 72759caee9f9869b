"""User-data: what a VM runs at first boot, with everything it needs and no credentials.

It is one gzip-compressed shell script (cloud-init unpacks gzip) with an xz-compressed
tar archive appended (the image's ``python3`` unpacks it): the bootstrap package
(:mod:`coiled_lab.bootstrap` — its modules only, not the library) and ``config.json`` (the
cluster id, role, scheduler address, the cluster's TLS certificate and key, the package
list, environment variables). The script makes sure the
image has a ``python3`` (Debian 12 and Amazon Linux 2023 do; else it installs one with
apt-get or dnf), unpacks the archive under ``$TMPDIR`` or ``/var/tmp`` (on disk: the
environment is installed there), runs ``python3 -m coiled_lab.bootstrap.vm`` with it and,
however that ends, shuts the machine down so EC2 terminates it. The bootstrap installs
the Python and packages dask runs with itself (:mod:`coiled_lab.bootstrap.packages`).

The TLS key is the cluster's own, made for it alone; it is not a cloud credential. No AWS
secret ever enters user-data: the VM signs its log requests with the instance role's.
"""

from __future__ import annotations

import gzip
import lzma
from typing import Any, Optional

from ... import config
from ...spec import ClusterSpec, ClusterSpecError
from ...tls import TLSMaterial
from .. import bootconfig

LIMIT = 16 * 1024  # EC2 accepts at most 16 KiB of user-data (before base64)
_XZ = [{"id": lzma.FILTER_LZMA2, "preset": 9 | lzma.PRESET_EXTREME, "dict_size": 1 << 20}]

_SCRIPT = """#!/bin/sh
# coiled-lab: the {role} of cluster {cluster}. It unpacks the bootstrap appended below and
# runs it; however that ends, the machine then shuts down and EC2 terminates it.
trap 'shutdown -h now' EXIT
PYTHON={python}
UNPACK='import sys, tarfile; tarfile.open(fileobj=sys.stdin.buffer, mode="r|xz").extractall(sys.argv[1])'
{install_python}dir=$(mktemp -d "${{TMPDIR:-/var/tmp}}/coiled-lab.XXXXXX") || exit 1
tail -c +{offset} "$0" | "$PYTHON" -c "$UNPACK" "$dir" || exit 1
cd "$dir" && "$PYTHON" -m coiled_lab.bootstrap.vm config.json
exit $?
"""


def bootstrap_config(
    cluster_id: str,
    spec: ClusterSpec,
    tls: TLSMaterial,
    role: str,
    scheduler_address: Optional[str] = None,
    gpu: bool = False,
    software: Optional[dict[str, Any]] = None,
) -> dict[str, Any]:
    """``config.json`` for one EC2 VM: the shared one, shipping logs to the log group."""
    return bootconfig.bootstrap_config("aws", cluster_id, spec, tls, role, scheduler_address, gpu, software,
                                       log_group=config.get("aws.log-group"))


def build(bootstrap: dict[str, Any], python: str = "python3") -> bytes:
    """The user-data bytes: compressed script + bootstrap archive, at most 16 KiB.
    ``python`` runs the bootstrap: the image's own (any 3.9 or newer does)."""
    # xz (Python's lzma: both images' python3 has it) packs the archive 7% smaller than gzip.
    archive = lzma.compress(bootconfig.archive(bootstrap), filters=_XZ)
    offset, script = 1, ""
    while True:  # the script names its own length; settle the number of digits
        script = _SCRIPT.format(role=bootstrap["role"], cluster=bootstrap["cluster_id"], python=python, offset=offset,
                                install_python=bootconfig.INSTALL_PYTHON)
        if len(script.encode()) + 1 == offset:
            break
        offset = len(script.encode()) + 1
    data = gzip.compress(script.encode() + archive, mtime=0)
    if len(data) > LIMIT:
        raise ClusterSpecError(
            f"package_sync: the VM's start-up data would be {len(data) / 1024:.1f} KiB, over EC2's 16 KiB; "
            "turn package_sync off and give software as a requirements file with fewer packages", "package_sync")
    return data
