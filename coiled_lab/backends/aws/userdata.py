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

import ast
import gzip
import io
import json
import sys
import tarfile
import time
from pathlib import Path
from typing import Any, Optional

from ... import config
from ...spec import ClusterSpec, ClusterSpecError
from ...tls import TLSMaterial
from .network import DASHBOARD_PORT, SCHEDULER_PORT

LIMIT = 16 * 1024  # EC2 accepts at most 16 KiB of user-data (before base64)
BOOTSTRAP_MODULES = ("__init__.py", "lifetime.py", "logship.py", "packages.py", "vm.py", "watchdog.py")
_BOOTSTRAP_DIR = Path(__file__).resolve().parents[2] / "bootstrap"
_STUB = '"""On a cluster VM: only coiled_lab.bootstrap is here, not the library."""\n'

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
    """``config.json`` for one VM (see :func:`coiled_lab.bootstrap.vm.main`)."""
    from ...bootstrap import lifetime, watchdog  # they import distributed: only when a VM is launched

    environ = dict(spec.environ)
    if role == "scheduler":
        environ.update(lifetime.environment(cluster_id, spec))
        environ.update(watchdog.environment(config.get("telemetry") or {}))
    pinned, skipped = packages or ([], [])
    return {
        "cluster_id": cluster_id,
        "role": role,
        "scheduler_address": scheduler_address,
        "scheduler_port": SCHEDULER_PORT,
        "dashboard_port": DASHBOARD_PORT,
        "log_group": config.get("aws.log-group"),
        "tls": {"cert": tls.cert_pem, "key": tls.key_pem},
        "environ": environ,
        "packages": pinned,
        "packages_skipped": skipped,
        "requirements": requirements_text(spec.software),
        "gpu": gpu,
        "nanny": bool(config.get("aws.nanny")),
        "death_timeout": float(config.get("aws.death-timeout")),
        "start_timeout": float(config.get("aws.start-timeout")),
        "spot_poll_interval": float(config.get("aws.spot-poll-interval")),
    }


def requirements_text(software: Optional[str]) -> Optional[str]:
    """The content of ``software`` when it names a requirements file (read here, shipped)."""
    if not software:
        return None
    path = Path(software).expanduser()
    if path.suffix != ".txt" or not path.is_file():
        raise ClusterSpecError(
            f"software: {software!r} is not allowed: the aws backend takes a requirements file "
            "(an existing path ending in .txt); container images are not supported on it", "software")
    return path.read_text()


def build(bootstrap: dict[str, Any], python: Optional[str] = None) -> bytes:
    """The user-data bytes: compressed script + bootstrap archive, at most 16 KiB."""
    python = python or f"python{sys.version_info.major}.{sys.version_info.minor}"
    archive = _archive(bootstrap)
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


def _archive(bootstrap: dict[str, Any]) -> bytes:
    buf = io.BytesIO()
    now = int(time.time())
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        def add(name: str, data: bytes, mode: int = 0o644) -> None:
            info = tarfile.TarInfo(name)
            info.size, info.mode, info.mtime = len(data), mode, now
            tar.addfile(info, io.BytesIO(data))

        add("coiled_lab/__init__.py", _STUB.encode())
        for module in BOOTSTRAP_MODULES:
            add(f"coiled_lab/bootstrap/{module}", _without_docstrings((_BOOTSTRAP_DIR / module).read_text()))
        add("config.json", json.dumps(bootstrap).encode(), mode=0o600)
    return buf.getvalue()


def _without_docstrings(source: str) -> bytes:
    """The module's code without docstrings and comments: a third less user-data, the
    same behaviour (line numbers in a VM's tracebacks differ from the source's)."""
    tree = ast.parse(source)
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and node.body:
            first = node.body[0]
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant) and isinstance(first.value.value, str):
                node.body = node.body[1:] or [ast.Pass()]
    return (ast.unparse(tree) + "\n").encode()
