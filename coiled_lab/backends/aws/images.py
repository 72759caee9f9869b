"""Machine images: the current AMI for each kind of machine, from public SSM parameters.

Debian 12 for x86_64 and arm64 machines (Debian's own parameters under
``/aws/service/debian/release/12/``: a bare system with no pip and no dask, on which the
bootstrap installs the cluster's Python and packages), the Deep Learning Base image
(Amazon Linux 2023 with the NVIDIA driver and CUDA) for GPU machines; the parameter names
are configurable (``coiled-lab.aws.images``). All kinds are asked for in one
``GetParameters`` call and kept for an hour: the parameters move when a new image is
published, a few times a month.
"""

from __future__ import annotations

import time

from ... import config
from .session import AWSError, AWSSession

CACHE_SECONDS = 3600


class Images:
    def __init__(self, aws: AWSSession):
        self.aws = aws
        self._cache: dict[str, tuple[float, dict[str, str]]] = {}  # region -> (when, kind -> AMI id)
        self._disks: dict[tuple[str, str], tuple[int, str, str]] = {}  # (region, AMI id) -> size, type, device

    async def image(self, region: str, kind: str) -> str:
        """The AMI id for ``kind`` ("x86_64", "arm64" or "gpu") in ``region``."""
        hit = self._cache.get(region)
        if hit is None or time.monotonic() - hit[0] > CACHE_SECONDS:
            parameters: dict[str, str] = dict(config.get("aws.images"))
            answer = await self.aws.call("ssm", region, "get_parameters", Names=list(parameters.values()))
            by_name = {p["Name"]: p["Value"] for p in answer.get("Parameters", [])}
            hit = (time.monotonic(), {k: by_name[name] for k, name in parameters.items() if name in by_name})
            self._cache[region] = hit
        if kind not in hit[1]:
            name = config.get("aws.images").get(kind)
            where = f"the SSM parameter {name} does not exist there" if name else "none is configured"
            raise AWSError(f"no {kind} image in {region}: {where} (coiled-lab.aws.images)")
        return hit[1][kind]

    async def root_disk(self, region: str, kind: str) -> tuple[int, str]:
        """Size (GiB) and EBS type of the root disk an instance of ``kind`` boots with."""
        size, volume_type, _ = await self._root(region, kind)
        return size, volume_type

    async def root_device(self, region: str, kind: str) -> tuple[str, str]:
        """Device name and EBS type of that root disk (to launch it with another size)."""
        _, volume_type, device = await self._root(region, kind)
        return device, volume_type

    async def _root(self, region: str, kind: str) -> tuple[int, str, str]:
        image = await self.image(region, kind)
        if (region, image) not in self._disks:
            answer = await self.aws.call("ec2", region, "describe_images", ImageIds=[image])
            found = answer.get("Images") or [{}]
            root = found[0].get("RootDeviceName")
            disk = next((m["Ebs"] for m in found[0].get("BlockDeviceMappings", [])
                         if m.get("DeviceName") == root and "Ebs" in m), None)
            if disk is None:
                raise AWSError(f"the image {image} in {region} has no EBS root disk")
            self._disks[(region, image)] = (int(disk["VolumeSize"]), disk.get("VolumeType", "gp3"), root)
        return self._disks[(region, image)]
