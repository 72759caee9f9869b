"""The S3 bucket of built environments (:mod:`coiled_lab.backends.envstore`) in one region.

Its name is ``coiled-lab.aws.env-bucket``, else ``coiled-lab-envs-<account>-<region>``
(S3 names are global: the account id keeps them apart, and every call on that default
name says which account must own it, so a bucket someone else made under it first is
never used); ``setup aws`` creates it with a lifecycle rule, public access blocked, and
lets the VMs' role read ``inputs/`` and read and write ``envs/``.
"""

from __future__ import annotations

from typing import Any, Optional

from ... import config
from ..envstore import EnvStore
from .session import AWSSession, error_code

_MISSING = {"404", "NoSuchKey", "NotFound", "NoSuchBucket", "403", "AccessDenied", "Forbidden"}


class S3Store(EnvStore):
    kind = "s3"

    def __init__(self, aws: AWSSession, region: str, bucket: str, owner: Optional[str] = None):
        super().__init__(bucket)
        self.aws, self.region, self.owner = aws, region, owner
        self._owner = {"ExpectedBucketOwner": owner} if owner else {}

    async def exists(self, key: str) -> bool:
        try:
            await self.aws.call("s3", self.region, "head_object", Bucket=self.bucket, Key=key, **self._owner)
            return True
        except Exception as exc:  # noqa: BLE001 - botocore's ClientError, by code
            if error_code(exc) in _MISSING:
                return False
            raise

    async def put(self, key: str, data: bytes) -> None:
        await self.aws.call("s3", self.region, "put_object", Bucket=self.bucket, Key=key, Body=data, **self._owner)

    def vm_store(self) -> dict[str, Any]:
        return {**super().vm_store(), "region": self.region}


async def bucket_name(aws: AWSSession, region: str) -> tuple[str, Optional[str]]:
    """The bucket's name, and the account that must own it (None for a configured name:
    a team may share one)."""
    configured = config.get("aws.env-bucket")
    if configured:
        return configured, None
    account = (await aws.call("sts", region, "get_caller_identity"))["Account"]
    return f"coiled-lab-envs-{account}-{region}", account


async def find(aws: AWSSession, region: str) -> Optional[S3Store]:
    """The region's bucket if it exists (None: ``setup aws`` has not made it, or
    ``coiled-lab.aws.env-bucket`` is ``false``: every VM installs from the index)."""
    if config.get("aws.env-bucket") is False:
        return None
    name, owner = await bucket_name(aws, region)
    try:
        await aws.call("s3", region, "head_bucket", Bucket=name, **({"ExpectedBucketOwner": owner} if owner else {}))
    except Exception as exc:  # noqa: BLE001
        if error_code(exc) in _MISSING:
            return None
        raise
    return S3Store(aws, region, name, owner)
