"""The small interface every backend implements.

Each method is a straight line of cloud (or process) calls; retries, timeouts, ordering
and recovery belong to the manager. Every resource a backend makes carries the cluster id
(a tag, a label, a path in a command line) so that :meth:`describe` and :meth:`cleanup`
can find it even when the store never heard of it (a crash between a launch and the
write that records it).
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import socket
import time
from abc import ABC, abstractmethod
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, ClassVar, Optional

from ..logs import LogRecord
from ..spec import ClusterSpec, ClusterSpecError, cluster_python
from ..tls import TLSMaterial


@dataclass
class Instance:
    """One machine (or local process) of a cluster, as the backend reported it (and the
    store keeps it: the store imports it from here, never the other way round)."""

    id: str
    role: str  # "scheduler" | "worker"
    address: Optional[str] = None
    vm_type: Optional[str] = None
    zone: Optional[str] = None
    spot: bool = False
    launched_at: float = field(default_factory=time.time)
    terminated_at: Optional[float] = None
    data: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)



def check_vm_software(spec: ClusterSpec, cloud: str) -> None:
    """What a cloud cluster's VMs are to install, checked before any cloud call: the Python
    they run (the spec's, else the asking environment's, must be supported) and the
    requirements file ``software`` names (it exists and every line is installable there).
    Raise :class:`~coiled_lab.spec.ClusterSpecError` naming the field."""
    from ..software import requirements

    cluster_python(spec)
    requirements(spec.software, cloud)


def owner_id(state_dir: Path) -> str:
    """A short stable id for one store: this host and its state directory."""
    text = f"{socket.gethostname()}:{Path(state_dir).resolve()}"
    return hashlib.sha256(text.encode()).hexdigest()[:16]


@dataclass
class ClusterContext:
    """What a backend knows about one cluster when the manager calls it."""

    id: str
    name: str
    spec: ClusterSpec
    tls: TLSMaterial
    directory: Path  # 0700; holds the TLS files and anything the backend keeps on disk
    state: dict[str, Any] = field(default_factory=dict)  # backend-owned ids, persisted by the manager
    instances: list[Instance] = field(default_factory=list)  # live instances the store knows
    # What package sync installs (:class:`~coiled_lab.environment.Environment`, taken where
    # the cluster was asked for); None when the spec syncs nothing.
    environment: Any = None
    # Tell the user something about provisioning (a zone out of capacity and what was done
    # instead, a spot fallback; where the software comes from): notify(kind, message[, level]),
    # the level "warning" unless said.
    notify: Callable[..., None] = lambda kind, message, level="warning": None


class Backend(ABC):
    name: ClassVar[str]
    # Seconds after launch during which an instance missing from describe() is not yet
    # taken for lost (cloud APIs are eventually consistent; local processes are not).
    describe_grace: ClassVar[float] = 0.0
    # The manager's price book (:class:`~coiled_lab.pricing.PriceBook`), given to every
    # backend it uses so that prices a backend needs to choose machine types come from the
    # same day-long cache as its estimates and costs. None until the manager gives it.
    prices: Any = None

    async def check_access(self, region: Optional[str] = None) -> None:
        """Raise if this backend cannot work at all (no cloud credentials, its endpoint
        unreachable), so that a create is refused at once instead of failing in the
        background after minutes of retries. No cloud call (a TCP connect at most)."""

    def check_spec(self, spec: ClusterSpec) -> None:
        """Raise :class:`~coiled_lab.spec.ClusterSpecError` for what this backend can tell
        is wrong without asking its cloud (a region it does not have). No cloud call."""

    async def environment_built(self, env_hash: str, region: Optional[str] = None) -> Optional[bool]:
        """Whether this cloud's environment bucket holds the built environment ``env_hash``;
        None where there is no bucket (the local backend: it runs this server's)."""
        return None

    async def ensure_network(self, cluster: ClusterContext) -> dict[str, Any]:
        """Make sure network, firewall and the like exist; return state to persist."""
        return {}

    @abstractmethod
    async def launch_scheduler(self, cluster: ClusterContext) -> Instance:
        """Start the scheduler machine; return as soon as it exists (not when it is ready)."""

    @abstractmethod
    async def scheduler_address(self, cluster: ClusterContext, scheduler: Instance) -> Optional[str]:
        """The scheduler's ``tls://`` address once known, else None (the manager asks again)."""

    @abstractmethod
    async def launch_workers(self, cluster: ClusterContext, count: int) -> list[Instance]:
        """Start ``count`` worker machines in as few calls as the platform allows."""

    @abstractmethod
    async def stop_instances(self, cluster: ClusterContext, instances: list[Instance]) -> None:
        """Terminate these machines; already-gone ones are not an error."""

    @abstractmethod
    async def describe(self, cluster: ClusterContext) -> list[Instance]:
        """What really runs for this cluster, found by its id, not by the store."""

    @abstractmethod
    async def logs(self, cluster: ClusterContext, since: Optional[float] = None) -> list[LogRecord]:
        """Log records newer than ``since`` (all when None), oldest first."""

    async def cleanup(self, cluster: ClusterContext) -> list[str]:
        """Remove everything that carries this cluster's id; return what was removed."""
        running = await self.describe(cluster)
        await self.stop_instances(cluster, running)
        return [f"{i.role} {i.id}" for i in running]

    async def price_inputs(self, spec: ClusterSpec) -> dict[str, Any]:
        """What an estimate needs: ``region``, ``scheduler_type``, ``worker_type`` (the first
        choice), ``spot_price`` of that worker type (None if unknown), ``volume_gb`` and
        ``volume_type`` of each machine's disk."""
        raise ClusterSpecError(f"backend: {self.name!r} cannot estimate prices", "backend")

    async def instance_price(self, instance: Instance, book: Any) -> float:
        """$/hour of one instance as it was launched (type, zone, spot or on-demand)."""
        raise ClusterSpecError(f"backend: {self.name!r} has no prices", "backend")

    async def catalog(self, region: Optional[str] = None) -> dict[str, Any]:
        """Regions, zones and instance types with their sizes."""
        return {"backend": self.name, "regions": [], "instance_types": []}


REACH_TIMEOUT = 5.0  # seconds a front door waits to find a cloud's endpoint unreachable


async def check_reachable(url: str, what: str) -> None:
    """Raise :class:`~coiled_lab.errors.CloudProblem` (503) when nothing answers a TCP
    connect to ``url``'s host within :data:`REACH_TIMEOUT`: botocore's and google's
    retries would otherwise spend minutes on an endpoint that is not there. Behind an HTTP
    proxy (``https_proxy``) only the proxy can tell: nothing is checked then."""
    import urllib.request
    from urllib.parse import urlsplit

    from ..errors import CloudProblem

    parts = urlsplit(url)
    host, port = parts.hostname or "", parts.port or (443 if parts.scheme == "https" else 80)
    if urllib.request.getproxies().get(parts.scheme) and not urllib.request.proxy_bypass(host):
        return
    try:
        _, writer = await asyncio.wait_for(asyncio.open_connection(host, port), REACH_TIMEOUT)
    except (OSError, asyncio.TimeoutError) as exc:
        if isinstance(exc, asyncio.TimeoutError):
            reason = f"no answer within {REACH_TIMEOUT:g} s"
        elif isinstance(exc, ConnectionRefusedError):
            reason = "connection refused"
        else:  # asyncio's "Connect call failed" says less than the errno
            reason = os.strerror(exc.errno) if exc.errno and exc.errno > 0 else str(exc)
        raise CloudProblem(503, "cloud_unreachable",
                           f"cannot reach {what} at {host}:{port} ({reason}); check this machine's network, or the "
                           "endpoint it is configured with") from None
    writer.close()
