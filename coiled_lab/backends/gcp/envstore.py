"""The Cloud Storage bucket of built environments (:mod:`coiled_lab.backends.envstore`), one per project.

Its name is ``coiled-lab.gcp.env-bucket``, else ``coiled-lab-envs-<project>``; ``setup gcp``
creates it in the region it prepares (uniform bucket-level access, public access prevented,
objects deleted ``env-expire-days`` after they were written, label ``coiled-lab=managed``)
and lets the VMs' service account read the bucket and write ``envs/`` only (an IAM
condition on the object name). Requests go through the JSON API with the session's
credentials, to ``STORAGE_EMULATOR_HOST`` when set, as Google's libraries do.

Bucket names are global: anyone may create ``coiled-lab-envs-<your project>`` first. The
default name is used only when the bucket belongs to the project (its ``projectNumber``);
a bucket named in the config is trusted as it is (a team may share one across projects).
"""

from __future__ import annotations

import logging
import re
from typing import Any, Callable, Optional
from urllib.parse import quote

from ... import config
from ..envstore import EnvStore
from .session import GCPError, GCPSession, is_not_found

logger = logging.getLogger("coiled_lab.gcp")
# What the credentials that launch clusters need on the bucket (printed by `setup gcp`).
EVERYDAY_PERMISSIONS = ("storage.buckets.get", "storage.objects.get", "storage.objects.create")
_numbers: dict[str, str] = {}  # project id -> project number (asked once per process)


def _path(bucket: str, key: Optional[str] = None) -> str:
    path = f"/storage/v1/b/{quote(bucket, safe='')}"
    return path if key is None else f"{path}/o/{quote(key, safe='')}"


def _code(exc: BaseException) -> Optional[int]:
    return getattr(exc, "code", None)


def _refused(bucket: str, exc: BaseException) -> GCPError:
    """The bucket's 403, saying what these credentials need."""
    return GCPError(f"the environment bucket {bucket} refused these credentials ({getattr(exc, 'message', exc)}): "
                    f"they need {', '.join(EVERYDAY_PERMISSIONS)} on it (see `coiled-lab setup gcp`), or set "
                    "coiled-lab.gcp.env-bucket to false to install every VM's environment from the package index")


class GCSStore(EnvStore):
    kind = "gcs"

    def __init__(self, gcp: GCPSession, bucket: str):
        super().__init__(bucket)
        self.gcp = gcp

    async def exists(self, key: str) -> bool:
        try:
            await self.gcp.rest("GET", "storage", _path(self.bucket, key), params={"fields": "name"})
            return True
        except Exception as exc:  # noqa: BLE001 - google.api_core errors, by code
            if is_not_found(exc):
                return False
            if _code(exc) == 403:
                raise _refused(self.bucket, exc) from exc
            raise

    async def put(self, key: str, data: bytes) -> None:
        """A media upload that never replaces an object (``ifGenerationMatch=0``): a key is
        its content's hash, so one already there (another server put it a moment ago) is
        the same, and writing over it would need ``storage.objects.delete``."""
        try:
            await self.gcp.rest("POST", "storage", f"/upload{_path(self.bucket)}/o", data=data,
                                params={"uploadType": "media", "name": key, "ifGenerationMatch": "0",
                                        "fields": "name"},
                                headers={"Content-Type": "application/octet-stream"})
        except Exception as exc:  # noqa: BLE001
            if _code(exc) == 412:  # already there
                return
            if _code(exc) == 403:
                raise _refused(self.bucket, exc) from exc
            raise


def bucket_name(gcp: GCPSession) -> str:
    """``coiled-lab.gcp.env-bucket``, else ``coiled-lab-envs-<project>`` (a domain-scoped
    project's ``example.com:name`` made a valid bucket name)."""
    configured = config.get("gcp.env-bucket")
    if configured:
        return str(configured)
    return f"coiled-lab-envs-{re.sub(r'[^a-z0-9-]', '-', gcp.project.lower())}"[:63].rstrip("-")


async def project_number(gcp: GCPSession) -> str:
    project = gcp.project
    if project not in _numbers:
        found = await gcp.call(gcp.compute("Projects").get, project=project)
        _numbers[project] = str(found.id)
    return _numbers[project]


async def bucket(gcp: GCPSession, name: str) -> Optional[dict[str, Any]]:
    """The bucket's metadata, or None when there is no bucket of that name (404)."""
    try:
        return await gcp.rest("GET", "storage", _path(name))
    except Exception as exc:  # noqa: BLE001
        if is_not_found(exc):
            return None
        raise


async def foreign(gcp: GCPSession, found: dict[str, Any]) -> bool:
    """Whether a bucket with the default name belongs to another project."""
    if config.get("gcp.env-bucket"):
        return False  # named by the admin: trusted as it is
    return str(found.get("projectNumber")) != await project_number(gcp)


async def find(gcp: GCPSession, warn: Callable[[str], None] = logger.warning) -> Optional[GCSStore]:
    """The project's bucket if it exists (None: ``setup gcp`` has not made it, or
    ``coiled-lab.gcp.env-bucket`` is ``false``: every VM installs from the index). A bucket
    these credentials may not read, or one of that name another project owns, is None
    too, and ``warn`` says why."""
    if config.get("gcp.env-bucket") is False:
        return None
    name = bucket_name(gcp)
    try:
        found = await bucket(gcp, name)
    except Exception as exc:  # noqa: BLE001
        if _code(exc) != 403:
            raise
        warn(f"the environment bucket {name} refused these credentials (they need storage.buckets.get on it), or "
             "another project owns a bucket of that name: VMs install the environment from the package index")
        return None
    if found is None:
        return None
    if await foreign(gcp, found):
        warn(f"a bucket named {name} exists but belongs to another project: coiled-lab does not use it (set "
             "coiled-lab.gcp.env-bucket to a bucket of yours); VMs install the environment from the package index")
        return None
    return GCSStore(gcp, name)
