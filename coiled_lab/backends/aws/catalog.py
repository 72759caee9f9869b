"""Instance types: what a region offers, and which types a cluster's workers may use.

Sizes come from ``DescribeInstanceTypes`` (vCPUs, memory, GPUs, architecture), where
each type is offered from ``DescribeInstanceTypeOfferings``, and the current spot price
from ``DescribeSpotPriceHistory``. Answers are cached per region for an hour: they change
rarely, and a launch should not pay for them every time.

Workers use the types a spec names (``worker_vm_types``, in that order), or the smallest
types that fit ``worker_cpu`` / ``worker_memory`` / ``worker_gpu``,
the cheapest of a size first: the smallest size that fits is the cheapest of its family,
and among families of that size the current spot price decides. One launch template
carries one image, so a launch only mixes types of one kind (architecture, GPU or not) —
the kind of the first choice.

When EC2 cannot answer (no credentials, no network), :class:`SnapshotCatalog` makes the
same choices among the types of the bundled price snapshot, for estimates and the form.
"""

from __future__ import annotations

import asyncio
import datetime
import time
from dataclasses import dataclass
from typing import Any, Awaitable, Callable, Iterable, Optional

from ... import config, price_snapshot
from ...pricing import PriceUnknown
from ...spec import ClusterSpec, ClusterSpecError
from .. import sizing
from .session import AWSSession, error_code

CACHE_SECONDS = 3600


@dataclass(frozen=True)
class InstanceType:
    name: str
    vcpu: int
    memory: int  # bytes
    gpu: int
    gpu_maker: Optional[str]
    arch: str  # "x86_64" or "arm64"
    spot: bool  # may be bought as spot capacity
    burstable: bool  # CPU credits: fine for a while, then slow (not for dask workers)
    accelerated: bool  # has GPUs, Inferentia/Trainium, FPGAs or media accelerators: paid for, unused by dask

    @property
    def kind(self) -> str:
        """What image it needs: "x86_64", "arm64", "gpu" (NVIDIA on x86_64), or a kind
        coiled-lab has no image for (other GPUs)."""
        if not self.gpu:
            return self.arch
        if self.gpu_maker == "NVIDIA" and self.arch == "x86_64":
            return "gpu"
        return f"{self.gpu_maker or 'unknown'}-gpu-{self.arch}".lower()

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "vcpu": self.vcpu, "memory": self.memory, "gpu": self.gpu,
                "gpu_maker": self.gpu_maker, "arch": self.arch}


def parse_instance_type(item: dict[str, Any]) -> Optional[InstanceType]:
    """An item of ``DescribeInstanceTypes``; None for a type without an x86_64 or arm64 processor."""
    arches = item.get("ProcessorInfo", {}).get("SupportedArchitectures", [])
    arch = "x86_64" if "x86_64" in arches else "arm64" if "arm64" in arches else None
    if arch is None:
        return None
    gpus = item.get("GpuInfo", {}).get("Gpus", [])
    return InstanceType(
        name=item["InstanceType"],
        vcpu=item["VCpuInfo"]["DefaultVCpus"],
        memory=item["MemoryInfo"]["SizeInMiB"] * 2**20,
        gpu=sum(g.get("Count", 0) for g in gpus),
        gpu_maker=gpus[0].get("Manufacturer") if gpus else None,
        arch=arch,
        spot="spot" in item.get("SupportedUsageClasses", []),
        burstable=bool(item.get("BurstablePerformanceSupported")),
        accelerated=any(key in item for key in ("GpuInfo", "NeuronInfo", "InferenceAcceleratorInfo", "FpgaInfo",
                                                "MediaAcceleratorInfo")),
    )


def _check_arch(types: list[InstanceType], field: str) -> None:
    """With ``arm=True``, every type named for the cluster is an ARM (Graviton) one."""
    wrong = next((t for t in types if t.arch != "arm64"), None)
    if wrong is not None:
        raise ClusterSpecError(f"{field}: {wrong.name!r} is not allowed: arm=True asks for ARM machines and it is "
                               f"{'a GPU' if wrong.gpu else 'an x86_64'} type; name Graviton types such as "
                               "m7g.xlarge, or leave arm out", field)


def matching(types: Iterable[InstanceType], cpu: Optional[int], memory: Optional[int], gpu: Optional[int],
             prices: Optional[dict[str, float]] = None) -> list[InstanceType]:
    """Types with at least these sizes, the smallest first, then the cheapest of a size
    (:mod:`..sizing`, the rule every cloud shares); never burstable, and no accelerator
    dask would not use: NVIDIA GPUs on x86_64 when GPUs are asked for, none otherwise."""
    usable = [t for t in types if not t.burstable and (t.kind == "gpu" if gpu else not t.accelerated)]
    return sizing.smallest_then_cheapest(usable, cpu, memory, gpu, prices)


class Catalog:
    """Cached answers about one account's regions."""

    def __init__(self, aws: AWSSession):
        self.aws = aws
        self._cache: dict[tuple, tuple[float, Any]] = {}
        self._filling: dict[tuple, asyncio.Future] = {}  # key -> the one fill under way
        self._types: dict[str, dict[str, tuple[float, InstanceType]]] = {}  # region -> name -> (when, type)

    async def _cached(self, key: tuple, make: Callable[[], Awaitable[Any]]) -> Any:
        """The cached answer, or one fill shared by every caller that asks meanwhile: a
        form opened by many users at once would otherwise send each its own paginated
        DescribeInstanceTypes, filling the server's thread pool with the same request."""
        hit = self._cache.get(key)
        if hit and time.monotonic() - hit[0] < CACHE_SECONDS:
            return hit[1]
        filling = self._filling.get(key)
        if filling is None:
            filling = self._filling[key] = asyncio.ensure_future(make())
            filling.add_done_callback(lambda done: self._store(key, done))
        return await asyncio.shield(filling)

    def _store(self, key: tuple, done: asyncio.Future) -> None:
        self._filling.pop(key, None)
        if not done.cancelled() and done.exception() is None:
            self._cache[key] = (time.monotonic(), done.result())

    async def _describe(self, region: str, **params: Any) -> dict[str, InstanceType]:
        items = await self.aws.pages("ec2", region, "describe_instance_types", "InstanceTypes", **params)
        parsed = {t.name: t for t in (parse_instance_type(i) for i in items) if t is not None}
        now = time.monotonic()
        self._types.setdefault(region, {}).update({n: (now, t) for n, t in parsed.items()})
        return parsed

    async def types(self, region: str) -> dict[str, InstanceType]:
        """Every type of the region, by name (older generations too: price sorts them out)."""
        return await self._cached(("types", region), lambda: self._describe(region))

    async def named(self, region: str, names: list[str], field: str) -> list[InstanceType]:
        """These types, in this order, asking AWS (once) only about those not known yet.

        A name the region does not know is a :class:`ClusterSpecError` on ``field``.
        """
        known = self._types.get(region, {})
        now = time.monotonic()  # only the names asked about: the region may know a thousand types
        unknown = sorted({n for n in names if n not in known or now - known[n][0] >= CACHE_SECONDS})
        listed = self._cache.get(("types", region))
        if listed and now - listed[0] < CACHE_SECONDS:
            unknown = []  # the region's whole list is fresh: what it lacks, AWS would refuse too
        if unknown:
            try:
                await self._describe(region, InstanceTypes=unknown)
            except Exception as exc:
                if error_code(exc) != "InvalidInstanceType":
                    raise
                raise ClusterSpecError(f"{field}: {names!r} is not allowed: {exc}", field) from None
        known = self._types.get(region, {})
        missing = [n for n in names if n not in known]
        if missing:  # not in the region, or a type without an x86_64 or arm64 processor
            raise ClusterSpecError(f"{field}: {missing[0]!r} is not allowed: it is not an instance type of "
                                   f"{region} that coiled-lab can run (x86_64 or arm64 Linux)", field)
        return [known[n][1] for n in names]

    async def zones(self, region: str, names: Optional[list[str]] = None) -> dict[str, set[str]]:
        """The availability zones offering each of these types (every type when None)."""
        async def call() -> dict[str, set[str]]:
            filters = [{"Name": "instance-type", "Values": names}] if names else []
            items = await self.aws.pages("ec2", region, "describe_instance_type_offerings", "InstanceTypeOfferings",
                                         LocationType="availability-zone", Filters=filters)
            out: dict[str, set[str]] = {n: set() for n in names or ()}
            for item in items:
                out.setdefault(item["InstanceType"], set()).add(item["Location"])
            return out

        return await self._cached(("zones", region, tuple(sorted(names or ()))), call)

    async def spot_prices(self, region: str, names: Optional[list[str]] = None) -> dict[str, float]:
        """The lowest current spot price per type (USD/hour), across zones."""
        async def call() -> dict[str, float]:
            params: dict[str, Any] = {"ProductDescriptions": ["Linux/UNIX"],
                                      "StartTime": datetime.datetime.now(datetime.timezone.utc)}
            if names:
                params["InstanceTypes"] = names
            items = await self.aws.pages("ec2", region, "describe_spot_price_history", "SpotPriceHistory", **params)
            out: dict[str, float] = {}
            for item in items:
                price = float(item["SpotPrice"])
                out[item["InstanceType"]] = min(price, out.get(item["InstanceType"], price))
            return out

        return await self._cached(("spot", region, tuple(sorted(names or ()))), call)

    async def _sizing_prices(self, region: str, names: list[str]) -> dict[str, float]:
        """$/hour that orders the types of one size: the current spot prices."""
        return await self.spot_prices(region, names)

    async def choose(self, spec: ClusterSpec, region: str) -> tuple[InstanceType, list[InstanceType]]:
        """The scheduler's type, and the workers' types in order of preference, all of one
        kind; with ``arm``, Graviton ones. Types chosen by size are of the spec's
        architecture; types named choose their own, unless ``arm`` asks for ARM."""
        arch = "arm64" if spec.arm else "x86_64"
        prefix = "aws.arm-" if spec.arm else "aws."
        scheduler = spec.scheduler_vm_type or config.get(f"{prefix}scheduler-vm-type")
        if spec.worker_vm_types or not (spec.worker_cpu or spec.worker_memory or spec.worker_gpu):
            names = spec.worker_vm_types or list(config.get(f"{prefix}worker-vm-types"))
            # One call for both roles; an unknown name is most likely the one the spec gave.
            await self.named(region, [scheduler, *names],
                             "worker_vm_types" if spec.worker_vm_types else "scheduler_vm_type")
            workers = await self.named(region, names, "worker_vm_types")
            sizing.one_kind(names, (t.kind for t in workers))
            if spec.arm:  # types named without arm choose their own architecture
                _check_arch(workers, "worker_vm_types")
        else:
            fits = matching([t for t in (await self.types(region)).values() if t.arch == arch or t.gpu],
                            spec.worker_cpu, spec.worker_memory, spec.worker_gpu)
            if not fits:
                raise sizing.no_fit(spec, region, "instance type")
            # The smallest fitting sizes, then the cheapest of those (spot prices stand in
            # for on-demand ones, which the EC2 API does not give).
            nearest = [t for t in fits if t.kind == fits[0].kind][:20]
            prices = await self._sizing_prices(region, [t.name for t in nearest])
            workers = matching(nearest, spec.worker_cpu, spec.worker_memory, spec.worker_gpu, prices)
            workers = workers[: int(config.get("aws.max-vm-types"))]
        if spec.spot_policy != "on-demand":
            spot = [t for t in workers if t.spot]
            if not spot:
                raise ClusterSpecError(f"spot_policy: none of {', '.join(t.name for t in workers)} can be bought "
                                       "as spot capacity; use 'on-demand'", "spot_policy")
            workers = spot
        if spec.scheduler_cpu or spec.scheduler_memory:
            scheduler_type = await self._sized_scheduler(spec, region, arch)
        else:
            (scheduler_type,) = await self.named(region, [scheduler], "scheduler_vm_type")
            if spec.arm:
                _check_arch([scheduler_type], "scheduler_vm_type")
        return scheduler_type, [t for t in workers if t.kind == workers[0].kind]

    async def _sized_scheduler(self, spec: ClusterSpec, region: str, arch: str) -> InstanceType:
        """The smallest, then cheapest, type with ``scheduler_cpu`` / ``scheduler_memory``."""
        fits = matching([t for t in (await self.types(region)).values() if t.arch == arch],
                        spec.scheduler_cpu, spec.scheduler_memory, None)
        if not fits:
            field = "scheduler_cpu" if spec.scheduler_cpu else "scheduler_memory"
            raise ClusterSpecError(f"{field}: no {arch} instance type in {region} has {spec.scheduler_cpu or 1} vCPUs "
                                   f"and {(spec.scheduler_memory or 0) / 2**30:g} GiB; ask for less", field)
        nearest = [t for t in fits if (t.vcpu, t.memory) == (fits[0].vcpu, fits[0].memory)]
        prices = await self._sizing_prices(region, [t.name for t in nearest])
        return matching(nearest, spec.scheduler_cpu, spec.scheduler_memory, None, prices)[0]

    async def describe_region(self, region: str) -> dict[str, Any]:
        """The catalog as the API shows it: zones, and each type's sizes, zones and spot
        price. Built once per cache period (hundreds of types: too much to rebuild per request)."""
        return await self._cached(("view", region), lambda: self._view(region))

    async def _view(self, region: str) -> dict[str, Any]:
        types = await self.types(region)
        zones = await self.zones(region)
        prices = await self.spot_prices(region)
        all_zones = sorted(set().union(*zones.values())) if zones else []
        return {
            "backend": "aws",
            "regions": [{"name": region, "zones": all_zones}],
            "instance_types": [
                {**t.to_json(), "zones": sorted(zones.get(t.name, ())), "spot_price_per_hour": prices.get(t.name)}
                for t in sorted(types.values(), key=lambda t: (t.gpu, t.vcpu, t.memory, t.name))
            ],
        }


class SnapshotCatalog(Catalog):
    """The catalog as the bundled price snapshot knows it (:mod:`coiled_lab.price_snapshot`):
    the types it prices in a region, with their sizes and on-demand prices (which order
    the types of a size); no zones and no spot prices. No call is made."""

    def __init__(self) -> None:
        super().__init__(aws=None)  # type: ignore[arg-type]

    @staticmethod
    def _listed(region: str) -> dict[str, dict[str, Any]]:
        listed = price_snapshot.aws_types(region)
        if not listed:
            raise PriceUnknown(f"region: the bundled price snapshot has no prices for {region!r} and EC2 could not "
                               f"be asked; regions it prices: {', '.join(price_snapshot.regions('aws'))}", "region")
        return listed

    async def _describe(self, region: str, **params: Any) -> dict[str, InstanceType]:
        wanted = params.get("InstanceTypes")
        parsed = {name: InstanceType(name=name, vcpu=size["vcpu"], memory=size["memory_mib"] * 2**20,
                                     gpu=size["gpu"], gpu_maker=size["gpu_maker"], arch=size["arch"], spot=True,
                                     burstable=size["burstable"], accelerated=bool(size["gpu"]))
                  for name, size in self._listed(region).items() if wanted is None or name in wanted}
        self._types.setdefault(region, {}).update({n: (time.monotonic(), t) for n, t in parsed.items()})
        return parsed

    async def named(self, region: str, names: list[str], field: str) -> list[InstanceType]:
        listed = await self.types(region)
        missing = [n for n in names if n not in listed]
        if missing:
            raise PriceUnknown(f"{field}: {missing[0]!r} is not in the bundled price snapshot for {region} and EC2 "
                               "could not be asked about it", field)
        return [listed[n] for n in names]

    async def zones(self, region: str, names: Optional[list[str]] = None) -> dict[str, set[str]]:
        return {n: set() for n in names or ()}

    async def spot_prices(self, region: str, names: Optional[list[str]] = None) -> dict[str, float]:
        return {}

    async def _sizing_prices(self, region: str, names: list[str]) -> dict[str, float]:
        return {name: found[0] for name in names if (found := price_snapshot.aws_on_demand(region, name))}

    async def describe_region(self, region: str) -> dict[str, Any]:
        view = await self._view(region)
        for item in view["instance_types"]:
            found = price_snapshot.aws_on_demand(region, item["name"])
            item["price_per_hour"] = found[0] if found else None
        return view
