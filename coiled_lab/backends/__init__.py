"""Backends: where a cluster's machines come from. Pick one by name with :func:`get_backend`."""

from __future__ import annotations

from typing import Any

from .base import Backend, ClusterContext


def get_backend(name: str, session: Any = None) -> Backend:
    """A new backend instance; imports its cloud SDK only when first asked for.

    ``session`` holds the credentials a cloud backend uses (for AWS a boto3 or botocore
    session, for GCP google.auth credentials; the Jupyter server passes the ones it
    stores); None means the SDK's standard chain (for GCP: Application Default Credentials).
    """
    if name == "local":
        from .local import LocalBackend

        return LocalBackend()
    if name == "aws":
        from .aws import AWSBackend

        return AWSBackend(session)
    if name == "gcp":
        from .gcp import GCPBackend

        return GCPBackend(session)
    raise ValueError(f"backend: {name!r} is not allowed; available: 'local', 'aws', 'gcp'")


__all__ = ["Backend", "ClusterContext", "get_backend"]
