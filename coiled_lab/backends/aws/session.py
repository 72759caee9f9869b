"""boto3 for the AWS backend: one session, clients with botocore's retry mode, calls off the loop.

Every AWS call of the backend goes through :meth:`AWSSession.call` (or :meth:`pages`): it
runs the blocking boto3 call in a daemon thread (:mod:`coiled_lab.deadline`: one that
hangs never holds the process at exit) so the manager's event loop never waits on the
network, and the client's retry configuration (``coiled-lab.aws.retry-mode`` /
``max-attempts``) absorbs throttling and transient server errors, so no call site
retries by hand. boto3 is imported on first use: ``import coiled_lab`` stays cheap.
"""

from __future__ import annotations

import functools
import threading
from typing import Any, Optional

from ... import config, deadline
from ...errors import CloudSetupError
from ...spec import ClusterSpecError


class AWSError(CloudSetupError):
    """An AWS request that failed in a way the user must act on; the message says how."""


def error_code(exc: BaseException) -> Optional[str]:
    """The AWS error code of a botocore ClientError (``"InvalidGroup.NotFound"``), else None."""
    response = getattr(exc, "response", None)
    if isinstance(response, dict):
        return response.get("Error", {}).get("Code")
    return None


@functools.lru_cache(maxsize=1)
def ec2_regions() -> frozenset[str]:
    """Every region with EC2, in every partition, from botocore's own endpoint data (no call)."""
    import boto3

    session = boto3.Session()
    return frozenset(region for partition in session.get_available_partitions()
                     for region in session.get_available_regions("ec2", partition_name=partition))


def check_region(region: str, field: str = "region") -> str:
    """``region`` if AWS has it, else a :class:`ClusterSpecError` on ``field``: refused here,
    not by a call to an endpoint that does not exist."""
    if region not in ec2_regions():
        known = sorted(r for r in ec2_regions() if "-gov-" not in r and not r.startswith("cn-"))
        raise ClusterSpecError(f"{field}: {region!r} is not allowed: it is not an AWS region with EC2; "
                               f"regions: {', '.join(known)}", field)
    return region


class AWSSession:
    """Clients per (service, region) on one boto3 session.

    ``session`` may be a ``boto3.Session`` or a ``botocore.session.Session`` (the Jupyter
    server passes the one holding its credentials); by default boto3's standard chain
    (environment, profile, SSO, instance role) applies.
    """

    def __init__(self, session: Any = None):
        self._given = session
        self._session: Any = None
        self._clients: dict[tuple[str, str], Any] = {}
        self._lock = threading.Lock()

    @property
    def boto3(self):
        """The boto3 session (created on first use)."""
        with self._lock:
            if self._session is None:
                import boto3
                import botocore.session

                if isinstance(self._given, botocore.session.Session):
                    self._session = boto3.Session(botocore_session=self._given)
                else:
                    self._session = self._given or boto3.Session()
            return self._session

    def client(self, service: str, region: str):
        key = (service, region)
        if key not in self._clients:
            from botocore.config import Config

            retries = {"mode": config.get("aws.retry-mode"), "max_attempts": int(config.get("aws.max-attempts"))}
            session = self.boto3
            with self._lock:  # boto3 sessions are not thread-safe; the clients they make are
                if key not in self._clients:
                    self._clients[key] = session.client(
                        service, region_name=region,
                        config=Config(retries=retries, user_agent_appid="coiled-lab",
                                      read_timeout=float(config.get("aws.read-timeout"))),
                    )
        return self._clients[key]

    async def call(self, service: str, region: str, operation: str, **params: Any) -> dict[str, Any]:
        """One API call (``operation`` as boto3 names it, e.g. ``run_instances``), in a thread."""
        method = getattr(self.client(service, region), operation)
        return await deadline.blocking(method, **params)

    async def pages(self, service: str, region: str, operation: str, key: str, **params: Any) -> list[Any]:
        """Every page of a paginated call, the lists under ``key`` concatenated."""
        paginator = self.client(service, region).get_paginator(operation)

        def collect() -> list[Any]:
            out: list[Any] = []
            for page in paginator.paginate(**params):
                out.extend(page.get(key, []))
            return out

        return await deadline.blocking(collect)

    def endpoint(self, service: str, region: str) -> str:
        """The URL this session sends ``service`` requests to (AWS_ENDPOINT_URL when set)."""
        return self.client(service, region).meta.endpoint_url
