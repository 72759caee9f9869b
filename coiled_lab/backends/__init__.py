"""Backends: where a cluster's machines come from. Pick one by name with :func:`get_backend`."""

from __future__ import annotations

from typing import Any

from .base import Backend, ClusterContext


def get_backend(name: str, session: Any = None) -> Backend:
    """A new backend instance; imports its cloud SDK only when first asked for.

    ``session`` holds the credentials a cloud backend uses (for AWS a boto3 or botocore
    session; the Jupyter server passes the one with its stored credentials); None means
    the SDK's standard chain.
    """
    if name == "local":
        from .local import LocalBackend

        return LocalBackend()
    if name == "aws":
        from .aws import AWSBackend

        return AWSBackend(session)
    raise ValueError(
        f"backend: {name!r} is not allowed: its backend is not installed in this version; available: 'local', 'aws'"
    )


__all__ = ["Backend", "ClusterContext", "get_backend"]
