"""Environments built once per hash and kept in the user's own bucket, whatever the cloud.

The server puts ``inputs/<hash>.tar`` there before the first VM of a cluster boots: what
installing the environment needs besides the package index (``pins.txt``, the user's
wheels, their code as ``files.tar.gz``). The first scheduler with a new hash installs it
and uploads ``envs/<hash>.squashfs``; every other VM mounts that instead
(:mod:`coiled_lab.bootstrap.envcache`). The VMs read and write with their own identity
(instance role, service account), which ``setup`` lets read the inputs and archives and
write archives (``envs/``) only; the bucket's lifecycle rule removes objects
``env-expire-days`` after they were written (the next cluster that needs one builds it again).

What a cloud provides is :class:`EnvStore`: whether a key exists, putting one, and how
its VMs name the bucket. :func:`boot_fields` is the rest, shared.
"""

from __future__ import annotations

import io
import json
import logging
import tarfile
from abc import ABC, abstractmethod
from typing import Any, Callable, Optional

from ..environment import Environment
from ..spec import ClusterSpecError

logger = logging.getLogger("coiled_lab.envstore")
ARCHIVE = "envs/{hash}.squashfs"  # a read-only filesystem image that VMs mount
INPUTS = "inputs/{hash}.tar"
# How long a worker of a cluster building a new environment waits for the archive before
# installing it itself (the scheduler builds it while the workers boot).
WAIT_SECONDS = 900.0


class EnvStore(ABC):
    kind: str  # "s3" | "gcs"

    def __init__(self, bucket: str):
        self.bucket = bucket
        self._present: set[str] = set()  # keys this process put or saw: asked once

    @abstractmethod
    async def exists(self, key: str) -> bool: ...

    @abstractmethod
    async def put(self, key: str, data: bytes) -> None: ...

    def vm_store(self) -> dict[str, Any]:
        """How a VM names the bucket (config.json's ``env.store``)."""
        return {"kind": self.kind, "bucket": self.bucket}

    async def ensure(self, key: str, data: Any) -> None:
        """``key`` in the bucket, put from ``data()`` if missing."""
        if key in self._present or await self.exists(key):
            self._present.add(key)
            return
        await self.put(key, data())
        self._present.add(key)


def inputs(env: Environment) -> bytes:
    """``inputs/<hash>.tar``: ``pins.txt``, ``wheels/*.whl``, ``files.tar.gz``, ``meta.json``."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tar:
        def add(name: str, data: bytes) -> None:
            info = tarfile.TarInfo(name)
            info.size, info.mode = len(data), 0o644
            tar.addfile(info, io.BytesIO(data))

        add("pins.txt", "".join(f"{p}\n" for p in env.pins()).encode())
        for name, data in sorted(env.wheels.items()):
            add(f"wheels/{name}", data)
        if env.files:
            add("files.tar.gz", env.files)
        add("meta.json", json.dumps({"hash": env.hash, "python": env.python, "where": env.where}).encode())
    return buffer.getvalue()


async def boot_fields(env: Optional[Environment], store: Optional[EnvStore], role: str, cloud: str,
                      notify: Callable[..., None] = lambda kind, message, level="warning": None) -> dict[str, Any]:
    """config.json's software fields for one VM of a cluster syncing ``env``:
    with a bucket, ``env`` (hash, store, archive and inputs keys, whether it is built);
    without one, the pins themselves (every VM installs them from the index), which works
    only when nothing local is to be shipped. For the scheduler, ``notify`` is told the
    software line (where from, how many packages, built or building)."""
    if env is None:
        return {"packages": [], "packages_skipped": []}
    skipped = env.unsynced()
    if role == "scheduler" and store is None:
        notify("software", env.line("no environment bucket: every VM installs it from the index"), "info")
    if store is None:
        if env.wheels or env.files:
            shipped = [*env.wheels, *(["the working directory's files"] if env.files else [])]
            raise ClusterSpecError(
                f"package_sync: {', '.join(shipped)} cannot reach the VMs without coiled-lab's environment bucket; run "
                f"`coiled-lab setup {cloud}` (it creates the bucket), or set coiled-lab.sync.include to [] and "
                "install local packages from an index", "package_sync")
        return {"packages": env.pins(), "packages_skipped": skipped}
    key, archive = INPUTS.format(hash=env.hash), ARCHIVE.format(hash=env.hash)
    await store.ensure(key, lambda: inputs(env))
    built = await store.exists(archive)
    if role == "scheduler":
        notify("software", env.line(f"built: mounted from {store.bucket}" if built else
                                    "building it once: later clusters mount it"), "info")
    return {"packages": [], "packages_skipped": skipped, "env": {
        "hash": env.hash, "store": store.vm_store(), "inputs": key, "archive": archive, "built": built,
        "build": role == "scheduler", "wait": WAIT_SECONDS}}
