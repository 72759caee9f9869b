"""What every cloud VM is given at boot, whatever the cloud: ``config.json`` and the
bootstrap package (:mod:`coiled_lab.bootstrap`, its modules only, not the library).

Each cloud wraps these in its own start-up mechanism (EC2 user-data:
:mod:`coiled_lab.backends.aws.userdata`; GCE ``startup-script`` metadata:
:mod:`coiled_lab.backends.gcp.startup`). Durations and switches are read from the cloud's
own config section (``coiled-lab.<cloud>.nanny``, ``death-timeout``, ...). The TLS key is
the cluster's own, made for it alone; no cloud credential is ever part of it.

What the VM installs (:mod:`coiled_lab.bootstrap.packages`) is described by:
``python_version`` (major.minor: the spec's ``python_version``, which the manager set from
the asking environment's), ``packages``/``packages_skipped``/``env`` (package_sync: the
pins, or where the built environment and its inputs are in the bucket,
:func:`coiled_lab.backends.envstore.boot_fields`), ``requirements`` (a
requirements file's content), ``dask_version``/``distributed_version`` (this environment's,
installed when there are no pins), ``required_packages`` (names besides dask, distributed,
cloudpickle, msgpack, tornado and toolz without which dask is not started:
``coiled-lab.required-packages``) and ``index_url`` (the package index the VMs use,
``coiled-lab.package-index``; unset: PyPI, or the VM's ``UV_INDEX_URL``/``PIP_INDEX_URL``).
"""

from __future__ import annotations

import ast
import functools
import io
import json
import tarfile
import time
from importlib import metadata
from pathlib import Path
from typing import Any, Iterable, Optional

from .. import config
from ..software import requirements
from ..spec import ClusterSpec, cluster_python
from ..tls import TLSMaterial
from .ingress import DASHBOARD_PORT, SCHEDULER_PORT

BOOTSTRAP_MODULES = ("__init__.py", "envcache.py", "logship.py", "packages.py", "utclog.py", "vm.py")
# What only one role's or one cloud's VMs need (EC2's user-data has 16 KiB for everything):
# the scheduler's preloads, the worker's waiting and spot retirement, GCE's metadata and logging.
ROLE_MODULES = {"scheduler": ("lifetime.py", "watchdog.py"), "worker": ("worker.py",)}
CLOUD_MODULES = {"aws": (), "gcp": ("cloudlogging.py", "gce.py")}
_BOOTSTRAP_DIR = Path(__file__).resolve().parents[1] / "bootstrap"
_STUB = '"""On a cluster VM: only coiled_lab.bootstrap is here, not the library."""\n'
# For each cloud's start-up script (it sets PYTHON): a python3 for the bootstrap where the
# image has none (Debian 12 and Amazon Linux 2023 images have one).
INSTALL_PYTHON = """if ! command -v "$PYTHON" >/dev/null 2>&1; then
    if command -v apt-get >/dev/null 2>&1; then
        apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q python3
    elif command -v dnf >/dev/null 2>&1; then
        dnf install -y -q python3
    fi
fi
"""


def bootstrap_config(
    cloud: str,
    cluster_id: str,
    spec: ClusterSpec,
    tls: TLSMaterial,
    role: str,
    scheduler_address: Optional[str] = None,
    gpu: bool = False,
    software: Optional[dict[str, Any]] = None,
    **cloud_fields: Any,
) -> dict[str, Any]:
    """``config.json`` for one VM (see :func:`coiled_lab.bootstrap.vm.main`);
    ``cloud_fields`` are what that cloud's log sink needs (a log group, a project...)."""
    from ..bootstrap import lifetime, watchdog  # they import distributed: only when a VM is launched

    environ = dict(spec.environ)
    if role == "scheduler":
        environ.update(lifetime.environment(cluster_id, spec))
        environ.update(watchdog.environment(config.get("telemetry") or {}))
    return {
        "cloud": cloud,
        "cluster_id": cluster_id,
        "role": role,
        "scheduler_address": scheduler_address,
        "scheduler_port": SCHEDULER_PORT,
        "dashboard_port": DASHBOARD_PORT,
        **cloud_fields,
        "tls": {"cert": tls.cert_pem, "key": tls.key_pem},
        "environ": environ,
        "packages": [],
        "packages_skipped": [],
        **(software or {}),
        "requirements": requirements(spec.software, cloud),
        "python_version": cluster_python(spec),
        "dask_version": _installed("dask"),
        "distributed_version": _installed("distributed"),
        "required_packages": list(config.get("required-packages") or []),
        "index_url": config.get("package-index") or None,
        "gpu": gpu,
        "nanny": spec.worker_class == "distributed.Nanny" if spec.worker_class else
                 bool(config.get(f"{cloud}.nanny")),
        "worker_options": dict(spec.worker_options),  # nthreads, memory_limit (bytes)
        "death_timeout": float(config.get(f"{cloud}.death-timeout")),
        "start_timeout": float(config.get(f"{cloud}.start-timeout")),
        "spot_poll_interval": float(config.get(f"{cloud}.spot-poll-interval")),
    }


def _installed(name: str) -> Optional[str]:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def archive(bootstrap: dict[str, Any]) -> bytes:
    """An uncompressed tar: ``coiled_lab/bootstrap/*.py`` (as :func:`for_vm` makes them) and ``config.json``."""
    buf = io.BytesIO()
    now = int(time.time())
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        def add(name: str, data: bytes, mode: int = 0o644) -> None:
            info = tarfile.TarInfo(name)
            info.size, info.mode, info.mtime = len(data), mode, now
            tar.addfile(info, io.BytesIO(data))

        add("coiled_lab/__init__.py", _STUB.encode())
        for module in (*BOOTSTRAP_MODULES, *ROLE_MODULES[bootstrap["role"]], *CLOUD_MODULES[bootstrap["cloud"]]):
            add(f"coiled_lab/bootstrap/{module}", _shipped(module))
        add("config.json", json.dumps(bootstrap).encode(), mode=0o600)
    return buf.getvalue()


# What only the server uses of the bootstrap modules (top-level names): not shipped.
SERVER_ONLY = {"lifetime.py": {"environment"}, "watchdog.py": {"environment"}}


@functools.lru_cache(maxsize=None)
def _shipped(module: str) -> bytes:
    """A bootstrap module as VMs get it, made once per process: parsing and unparsing the
    modules is tens of ms of the server's event loop, and every launch ships them."""
    return for_vm((_BOOTSTRAP_DIR / module).read_text(), SERVER_ONLY.get(module, ()))


def for_vm(source: str, drop: Iterable[str] = ()) -> bytes:
    """The module's code as VMs get it: without docstrings, comments, the annotations of
    functions (class bodies keep theirs: dataclasses read them) and the top-level
    definitions named in ``drop``. The same behaviour in about half the bytes (EC2's
    user-data has 16 KiB for everything); line numbers in a VM's tracebacks differ from
    the source's."""
    tree = ast.parse(source)
    tree.body = [node for node in tree.body if not _defines(node) or not _defines(node) <= set(drop)]
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and node.body:
            first = node.body[0]
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant) and isinstance(first.value.value, str):
                node.body = node.body[1:] or [ast.Pass()]
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            node.returns = None
            arguments = node.args
            for arg in (*arguments.posonlyargs, *arguments.args, *arguments.kwonlyargs, arguments.vararg, arguments.kwarg):
                if arg is not None:
                    arg.annotation = None
            _Unannotated().visit(node)
    return (ast.unparse(tree) + "\n").encode()


def _defines(node: ast.stmt) -> set[str]:
    if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
        return {node.name}
    targets = node.targets if isinstance(node, ast.Assign) else [node.target] if isinstance(node, ast.AnnAssign) else []
    return {t.id for t in targets if isinstance(t, ast.Name)}


class _Unannotated(ast.NodeTransformer):
    """Inside a function: ``x: T = v`` becomes ``x = v`` (a bare ``x: T`` does nothing)."""

    def visit_AnnAssign(self, node: ast.AnnAssign) -> ast.stmt:
        if node.value is None:
            return ast.Pass()
        return ast.Assign(targets=[node.target], value=node.value, lineno=node.lineno)
