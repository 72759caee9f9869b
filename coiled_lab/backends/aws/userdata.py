"""User-data: what a VM runs at first boot, with everything it needs and no credentials.

It is one gzip-compressed shell script (cloud-init unpacks gzip) with a tar archive
appended: the bootstrap package (:mod:`coiled_lab.bootstrap` — its modules only, not the
library) and ``config.json`` (the cluster id, role, scheduler address, the cluster's TLS
certificate and key, the package list, environment variables). The script makes sure a
matching Python exists, unpacks the archive, runs ``python -m coiled_lab.bootstrap.vm``
and, however that ends, shuts the machine down so EC2 terminates it.

The TLS key is the cluster's own, made for it alone; it is not a cloud credential. No AWS
secret ever enters user-data: the VM's boto3 uses the instance role.
"""

from __future__ import annotations

import gzip
import sys
from typing import Any, Optional

from ... import config
from ...spec import ClusterSpec, ClusterSpecError
from ...tls import TLSMaterial
from .. import bootconfig

LIMIT = 16 * 1024  # EC2 accepts at most 16 KiB of user-data (before base64)

_SCRIPT = """#!/bin/sh
# coiled-lab: the {role} of cluster {cluster}. It unpacks the bootstrap appended below and
# runs it; however that ends, the machine then shuts down and EC2 terminates it.
trap 'shutdown -h now' EXIT
PYTHON={python}
if ! command -v "$PYTHON" >/dev/null 2>&1; then
    dnf install -y -q "$PYTHON" "$PYTHON-pip"
fi
dir=$(mktemp -d -t coiled-lab.XXXXXX) || exit 1
tail -c +{offset} "$0" | tar -x -C "$dir" || exit 1
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
    packages: Optional[tuple[list[str], list[str]]] = None,
) -> dict[str, Any]:
    """``config.json`` for one EC2 VM: the shared one, shipping logs to the log group."""
    return bootconfig.bootstrap_config("aws", cluster_id, spec, tls, role, scheduler_address, gpu, packages,
                                       log_group=config.get("aws.log-group"))


def build(bootstrap: dict[str, Any], python: Optional[str] = None) -> bytes:
    """The user-data bytes: compressed script + bootstrap archive, at most 16 KiB."""
    python = python or f"python{sys.version_info.major}.{sys.version_info.minor}"
    archive = bootconfig.archive(bootstrap)
    offset, script = 1, ""
    while True:  # the script names its own length; settle the number of digits
        script = _SCRIPT.format(role=bootstrap["role"], cluster=bootstrap["cluster_id"], python=python, offset=offset)
        if len(script.encode()) + 1 == offset:
            break
        offset = len(script.encode()) + 1
    data = gzip.compress(script.encode() + archive, mtime=0)
    if len(data) > LIMIT:
        raise ClusterSpecError(
            f"package_sync: the VM's start-up data would be {len(data) / 1024:.1f} KiB, over EC2's 16 KiB; "
            "turn package_sync off and give software as a requirements file with fewer packages", "package_sync")
    return data
