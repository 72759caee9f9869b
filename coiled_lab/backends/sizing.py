"""Which machine types fit a worker size, and in what order: one rule for every cloud.

A spec may ask for sizes (``worker_cpu``, ``worker_memory``, ``worker_gpu``) instead of
naming types. Every cloud then offers the types that have at least those sizes — GPUs
only when asked for, none otherwise, since dask cannot use an accelerator it was not
given and the user would pay for it — the smallest first (what is bigger than asked for
is paid for and unused), and among types of one size the cheapest first. What a cloud
cannot run for dask at all (burstable or shared-core CPUs, non-NVIDIA accelerators)
it leaves out before asking here; what a price is (on-demand, Spot, a stand-in) is its
own business too. The refusals of a choice are said the same way on every cloud as well.
"""

from __future__ import annotations

from typing import Iterable, Mapping, Optional, Protocol, TypeVar

from ..spec import ClusterSpec, ClusterSpecError


class Sized(Protocol):
    """A machine type as this rule sees it (AWS's ``InstanceType``, GCP's ``MachineType``)."""

    @property
    def name(self) -> str: ...

    @property
    def vcpu(self) -> int: ...

    @property
    def memory(self) -> int:  # bytes
        ...

    @property
    def gpu(self) -> int: ...


T = TypeVar("T", bound=Sized)


def fits(t: Sized, cpu: Optional[int], memory: Optional[int], gpu: Optional[int]) -> bool:
    """At least ``cpu`` vCPUs (1 when None), ``memory`` bytes and ``gpu`` GPUs; no GPU when none is asked for."""
    if t.vcpu < (cpu or 1) or t.memory < (memory or 0):
        return False
    return t.gpu >= gpu if gpu else t.gpu == 0


def smallest_then_cheapest(types: Iterable[T], cpu: Optional[int], memory: Optional[int], gpu: Optional[int],
                           prices: Optional[Mapping[str, Optional[float]]] = None) -> list[T]:
    """The types that :func:`fits`, smallest (vCPUs, then memory, then GPUs) first, then by
    $/hour from ``prices`` (a type without a price after the priced ones of its size), then
    by name so that equal choices come out the same every time."""
    prices = prices or {}

    def price(t: T) -> float:
        known = prices.get(t.name)
        return float("inf") if known is None else known

    return sorted((t for t in types if fits(t, cpu, memory, gpu)),
                  key=lambda t: (t.vcpu, t.memory, t.gpu, price(t), t.name))


def one_kind(names: list[str], kinds: Iterable[str]) -> None:
    """Refuse named worker types of several kinds (CPU architectures, GPU or not): one
    launch boots one image."""
    mixed = sorted(set(kinds))
    if len(mixed) > 1:
        raise ClusterSpecError(f"worker_vm_types: {names!r} is not allowed: it mixes {' and '.join(mixed)} "
                               "machines, which need different images; give types of one kind", "worker_vm_types")


def no_fit(spec: ClusterSpec, region: str, what: str) -> ClusterSpecError:
    """The refusal of sizes no ``what`` ("instance type", "machine type") of ``region`` has,
    naming the field most likely to blame: GPUs, else vCPUs, else memory."""
    field = "worker_gpu" if spec.worker_gpu else "worker_cpu" if spec.worker_cpu else "worker_memory"
    return ClusterSpecError(f"{field}: no {what} in {region} has {spec.worker_cpu or 1} vCPUs, "
                            f"{spec.worker_memory or 0} bytes of memory and {spec.worker_gpu or 0} NVIDIA GPUs", field)
