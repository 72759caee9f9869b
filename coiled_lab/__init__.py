"""coiled-lab: Dask clusters in your own cloud (or on this machine), driven from JupyterLab.

Importing this package is cheap: ``Cluster``, ``ClusterSpec`` and friends load dask,
distributed and pydantic only when first used, so ``%load_ext coiled_lab`` is instant.
"""

from __future__ import annotations

__version__ = "0.1.0"

_LAZY = {
    "Cluster": "coiled_lab.cluster",
    "ClusterSpec": "coiled_lab.spec",
    "ClusterSpecError": "coiled_lab.spec",
    "ClusterError": "coiled_lab.errors",
    "ClusterManager": "coiled_lab.control.manager",
    "ClusterForm": "coiled_lab.widgets",
    "ClusterWidget": "coiled_lab.widgets",
    # Coiled's module-level names
    "list_instance_types": "coiled_lab.instance_types",
    "list_clusters": "coiled_lab.clusters",
    "cluster_logs": "coiled_lab.clusters",
    "delete_cluster": "coiled_lab.clusters",
    "get_notifications": "coiled_lab.clusters",
}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'coiled_lab' has no attribute {name!r}")


def __dir__():
    return sorted(list(globals()) + list(_LAZY))


def load_ipython_extension(ipython) -> None:
    """``%load_ext coiled_lab``: registers the ``%coiled`` line and cell magic."""
    from .magic import register

    register(ipython)


__all__ = list(_LAZY)
