"""Which machine types fit a worker size, and in what order: one rule for every cloud.

A spec may ask for sizes (``worker_cpu``, ``worker_memory``, ``worker_gpu``) instead of
naming types. Every cloud then offers the types that have at least those sizes — GPUs
only when asked for, none otherwise, since dask cannot use an accelerator it was not
given and the user would pay for it — the smallest first (what is bigger than asked for
is paid for and unused), and among types of one size the cheapest first. What a cloud
cannot run for dask at all (burstable or shared-core CPUs, non-NVIDIA accelerators)
it leaves out before asking here; what a price is (on-demand, Spot, a stand-in) is its
own business too.
"""

from __future__ import annotations

from typing import Iterable, Mapping, Optional, Protocol, TypeVar


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
