"""Machine types: what a region's zones offer, and which types a cluster's workers may use.

Sizes come from one ``machineTypes.aggregatedList`` (vCPUs, memory, built-in
accelerators, shared-core or not, in which zones), cached per project for an hour.

Workers use the types a spec names (``worker_vm_types``, in that order), or the types
that fit ``worker_cpu`` / ``worker_memory`` / ``worker_gpu``, the smallest first and the
cheapest of a size first (:mod:`..sizing`, the rule AWS follows too), priced as the
workers will be bought (on-demand, or Spot) by the price book the backend is given. A GPU
request takes machine types with built-in GPUs (``g2``, ``a2``...) or an N1 type with
``coiled-lab.gcp.gpu-type`` GPUs attached (``guest_accelerators``).

When Compute Engine cannot answer (no credentials, no network), :class:`SnapshotCatalog`
makes the same choices among the machine types of the bundled price snapshot.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from typing import Any, Awaitable, Callable, Mapping, Optional

from ... import config, price_snapshot
from ...pricing import PriceUnknown
from ...spec import ClusterSpec, ClusterSpecError
from .. import sizing
from .session import GCPSession

CACHE_SECONDS = 3600
SHARED_CORE = ("e2-micro", "e2-small", "e2-medium", "f1-micro", "g1-small")
# Families GPUs can be attached to (the others have theirs built in, or none).
ATTACHABLE = ("n1",)


@dataclass(frozen=True)
class MachineType:
    name: str
    vcpus: int
    memory_mib: int
    gpus: int = 0
    gpu_type: Optional[str] = None
    attached: bool = False  # the GPUs are guest accelerators asked for at launch
    shared_cpu: bool = False
    zones: tuple[str, ...] = ()

    @property
    def family(self) -> str:
        return self.name.split("-", 1)[0]

    @property
    def kind(self) -> str:
        """What image it needs: "gpu" or "cpu"."""
        return "gpu" if self.gpus else "cpu"

    # The sizes as :mod:`..sizing` reads them (memory in bytes), as AWS's types give them.
    @property
    def vcpu(self) -> int:
        return self.vcpus

    @property
    def memory(self) -> int:
        return self.memory_mib * 2**20

    @property
    def gpu(self) -> int:
        return self.gpus

    def machine(self) -> dict[str, Any]:
        """The shape pricing works from (the contract with :mod:`coiled_lab.pricing`)."""
        return {"name": self.name, "vcpus": self.vcpus, "memory_gib": round(self.memory_mib / 1024, 3),
                "gpus": self.gpus, "gpu_type": self.gpu_type}

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "vcpu": self.vcpus, "memory": self.memory_mib * 2**20, "gpu": self.gpus,
                "gpu_maker": "NVIDIA" if self.gpus else None, "gpu_type": self.gpu_type, "arch": "x86_64",
                "zones": list(self.zones)}


def matching(types: list[MachineType], cpu: Optional[int], memory: Optional[int], gpu: Optional[int],
             gpu_type: str, prices: Optional[Mapping[str, Optional[float]]] = None) -> list[MachineType]:
    """Types with at least these sizes, the smallest first, then the cheapest of a size
    (:mod:`..sizing`); never shared-core. When GPUs are asked for, N1 types count with
    ``gpu`` GPUs of ``gpu_type`` attached (and are priced with them)."""
    usable = []
    for t in types:
        if t.shared_cpu or t.name in SHARED_CORE:
            continue
        if gpu and not t.gpus and t.family in ATTACHABLE:
            t = dataclasses.replace(t, gpus=gpu, gpu_type=gpu_type, attached=True)
        usable.append(t)
    return sizing.smallest_then_cheapest(usable, cpu, memory, gpu, prices)


# What the catalog asks for prices: $/hour of each machine by name (None: not published),
# on-demand or Spot (the bool) in a region.
Prices = Callable[[str, list[MachineType], bool], Awaitable[Mapping[str, Optional[float]]]]


class Catalog:
    """Cached answers about one project's zones; ``prices`` orders the types that fit a size."""

    def __init__(self, gcp: GCPSession, prices: Prices):
        self.gcp = gcp
        self.prices = prices
        self._types: Optional[tuple[float, dict[str, dict[str, MachineType]]]] = None  # region -> name -> type

    async def types(self, region: str) -> dict[str, MachineType]:
        """Every machine type of the region's zones, by name (zones merged)."""
        if self._types is None or time.monotonic() - self._types[0] > CACHE_SECONDS:
            self._types = (time.monotonic(), await self._list())
        return self._types[1].get(region, {})

    def known(self, region: str, name: Optional[str]) -> Optional[MachineType]:
        """A type already listed (no call), for instances found by :meth:`describe`."""
        return self._types[1].get(region, {}).get(name or "") if self._types else None

    async def _list(self) -> dict[str, dict[str, MachineType]]:
        client = self.gcp.compute("MachineTypes")

        def collect() -> dict[str, dict[str, MachineType]]:
            out: dict[str, dict[str, MachineType]] = {}
            for scope, listed in client.aggregated_list(project=self.gcp.project):
                zone = scope.rsplit("/", 1)[-1]
                region = zone.rsplit("-", 1)[0]
                for item in listed.machine_types:
                    accelerators = list(item.accelerators)
                    known = out.setdefault(region, {}).get(item.name)
                    out[region][item.name] = MachineType(
                        name=item.name, vcpus=item.guest_cpus, memory_mib=item.memory_mb,
                        gpus=sum(a.guest_accelerator_count for a in accelerators),
                        gpu_type=accelerators[0].guest_accelerator_type if accelerators else None,
                        shared_cpu=bool(item.is_shared_cpu),
                        zones=tuple(sorted({*(known.zones if known else ()), zone})),
                    )
            return out

        return await self.gcp.call(collect)

    async def zones(self, region: str) -> list[str]:
        """The region's zones that offer any machine type, in name order."""
        return sorted({z for t in (await self.types(region)).values() for z in t.zones})

    async def named(self, region: str, names: list[str], field: str) -> list[MachineType]:
        types = await self.types(region)
        missing = [n for n in names if n not in types]
        if missing:
            raise ClusterSpecError(f"{field}: {missing[0]!r} is not allowed: no zone of {region} offers it", field)
        return [types[n] for n in names]

    async def choose(self, spec: ClusterSpec, region: str) -> tuple[MachineType, list[MachineType]]:
        """The scheduler's type, and the workers' types in order of preference, all of one kind."""
        scheduler_name = spec.scheduler_vm_type or config.get("gcp.scheduler-vm-type")
        if spec.worker_vm_types or not (spec.worker_cpu or spec.worker_memory or spec.worker_gpu):
            names = spec.worker_vm_types or list(config.get("gcp.worker-vm-types"))
            workers = await self.named(region, names, "worker_vm_types")
            sizing.one_kind(names, (t.kind for t in workers))
        else:
            sizes = (spec.worker_cpu, spec.worker_memory, spec.worker_gpu, config.get("gcp.gpu-type"))
            fits = matching(list((await self.types(region)).values()), *sizes)
            if not fits:
                raise sizing.no_fit(spec, region, "machine type")
            # Priced as they will be bought: Spot rates unless the workers run on demand.
            prices = await self.prices(region, fits, spec.spot_policy != "on-demand")
            workers = matching(fits, *sizes, prices)[: int(config.get("gcp.max-vm-types"))]
        if spec.scheduler_cpu or spec.scheduler_memory:
            return await self._sized_scheduler(spec, region), workers
        (scheduler,) = await self.named(region, [scheduler_name], "scheduler_vm_type")
        return scheduler, workers

    async def _sized_scheduler(self, spec: ClusterSpec, region: str) -> MachineType:
        """The smallest, then cheapest (on demand), type with ``scheduler_cpu`` / ``scheduler_memory``."""
        sizes = (spec.scheduler_cpu, spec.scheduler_memory, None, config.get("gcp.gpu-type"))
        fits = [t for t in matching(list((await self.types(region)).values()), *sizes) if not t.gpus]
        if not fits:
            field = "scheduler_cpu" if spec.scheduler_cpu else "scheduler_memory"
            raise ClusterSpecError(f"{field}: no machine type in {region} has {spec.scheduler_cpu or 1} vCPUs and "
                                   f"{(spec.scheduler_memory or 0) / 2**30:g} GiB; ask for less", field)
        return matching(fits, *sizes, await self.prices(region, fits, False))[0]

    async def describe_region(self, region: str) -> dict[str, Any]:
        types = await self.types(region)
        return {
            "backend": "gcp",
            "regions": [{"name": region, "zones": await self.zones(region)}],
            "instance_types": [t.to_json() for t in sorted(types.values(),
                                                          key=lambda t: (t.gpus, t.vcpus, t.memory_mib, t.name))],
        }


class SnapshotCatalog(Catalog):
    """The catalog as the bundled price snapshot knows it (:mod:`coiled_lab.price_snapshot`):
    the machine types it can price in a region, no zones; ``prices`` should price from the
    snapshot too (a :class:`~coiled_lab.pricing.PriceBook` without credentials). No call is made."""

    def __init__(self, prices: Prices):
        super().__init__(gcp=None, prices=prices)  # type: ignore[arg-type]

    async def types(self, region: str) -> dict[str, MachineType]:
        if region not in price_snapshot.regions("gcp"):
            raise PriceUnknown(f"region: the bundled price snapshot has no prices for {region!r} and Compute Engine "
                               f"could not be asked; regions it prices: {', '.join(price_snapshot.regions('gcp'))}",
                               "region")
        machines = {name: MachineType(name=name, vcpus=size["vcpus"], memory_mib=size["memory_mib"],
                                      gpus=size["gpus"], gpu_type=size["gpu_type"])
                    for name, size in price_snapshot.gcp_types().items()}
        priced = await self.prices(region, list(machines.values()), False)
        return {name: machine for name, machine in machines.items() if priced.get(name) is not None}

    async def named(self, region: str, names: list[str], field: str) -> list[MachineType]:
        types = await self.types(region)
        missing = [n for n in names if n not in types]
        if missing:
            raise PriceUnknown(f"{field}: {missing[0]!r} is not in the bundled price snapshot for {region} and "
                               "Compute Engine could not be asked about it", field)
        return [types[n] for n in names]

    async def describe_region(self, region: str) -> dict[str, Any]:
        view = await super().describe_region(region)
        prices = await self.prices(region, list((await self.types(region)).values()), False)
        for item in view["instance_types"]:
            item["price_per_hour"] = prices.get(item["name"])
        return view


class Images:
    """The boot image of each kind of machine: the newest of its family (``images.getFromFamily``)."""

    def __init__(self, gcp: GCPSession):
        self.gcp = gcp
        self._cache: dict[str, tuple[float, str]] = {}

    async def image(self, kind: str) -> str:
        """A self link, e.g. ``.../projects/debian-cloud/global/images/debian-12-bookworm-v2026...``."""
        hit = self._cache.get(kind)
        if hit and time.monotonic() - hit[0] < CACHE_SECONDS:
            return hit[1]
        path = config.get(f"gcp.images.{kind}")  # projects/<p>/global/images/family/<family>
        parts = path.split("/")
        if len(parts) != 6 or parts[0] != "projects" or parts[4] != "family":
            raise ClusterSpecError(f"coiled-lab.gcp.images.{kind}: {path!r} is not allowed: expected "
                                   "projects/<project>/global/images/family/<family>", "software")
        image = await self.gcp.call(self.gcp.compute("Images").get_from_family, project=parts[1], family=parts[5])
        self._cache[kind] = (time.monotonic(), image.self_link)
        return image.self_link
