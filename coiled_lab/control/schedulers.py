"""The control plane's line to each cluster's scheduler: one distributed ``rpc`` per
cluster over the cluster's own TLS, and the few calls the manager makes on it (who is
connected, the lifetime clocks, new timeouts, usage samples, retiring workers).

Kept apart from the manager so that what is asked of a scheduler, and how long it may
take, is read in one place.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any, Callable, Optional

from ..tls import TLSMaterial

logger = logging.getLogger("coiled_lab.manager")

IDENTITY_WAIT = 5.0  # seconds a scheduler has to say who is connected, and again its clocks
SET_TIMEOUTS_WAIT = 10.0  # seconds a PATCH of a timeout waits for the scheduler to take it
USAGE_WAIT = 10.0
RETIRE_WAIT = 60.0  # seconds to move the data off workers about to stop


class SchedulerLinks:
    """One rpc per cluster, made again when its scheduler's address changes."""

    def __init__(self, tls_of: Callable[[str], TLSMaterial]):
        self._tls_of = tls_of  # cluster id -> its TLS material
        self._rpcs: dict[str, Any] = {}
        self._client_args: dict[str, dict[str, Any]] = {}  # comm arguments (an SSL context) per cluster

    def rpc(self, cluster_id: str, address: str) -> Any:
        from distributed.core import rpc

        r = self._rpcs.get(cluster_id)
        if r is None or r.address != address:
            # An SSL context is made from PEM files written for it: once per cluster.
            args = self._client_args.get(cluster_id)
            if args is None:
                args = self._client_args[cluster_id] = self._tls_of(cluster_id).security().get_connection_args("client")
            r = rpc(address, timeout=3, connection_args=args)
            self._rpcs[cluster_id] = r
        return r

    async def forget(self, cluster_id: str, entirely: bool = False) -> None:
        """Close the cluster's rpc (made again on next use); ``entirely`` also drops its
        comm arguments (the cluster is over)."""
        r = self._rpcs.pop(cluster_id, None)
        if entirely:
            self._client_args.pop(cluster_id, None)
        if r is not None:
            await r.close_rpc()

    async def close(self) -> None:
        for cluster_id in list(self._rpcs):
            await self.forget(cluster_id)

    async def identity(self, cluster_id: str, address: str) -> Optional[dict[str, Any]]:
        """The scheduler's identity (plus our lifetime plugin's clocks, as
        ``coiled_lab_lifetime``), or None if it cannot be reached."""
        r = self.rpc(cluster_id, address)
        try:
            info = await asyncio.wait_for(r.identity(n_workers=-1), IDENTITY_WAIT)
        except (OSError, asyncio.TimeoutError, EnvironmentError):
            await self.forget(cluster_id)
            return None
        try:
            info["coiled_lab_lifetime"] = await asyncio.wait_for(r.coiled_lab_lifetime(), IDENTITY_WAIT)
        except Exception:  # noqa: BLE001 - an older scheduler without the plugin
            info["coiled_lab_lifetime"] = None
        return info

    async def set_timeouts(self, cluster_id: str, address: str, timeouts: dict[str, Optional[float]]) -> None:
        """Have the scheduler enforce new timeouts; raises OSError / TimeoutError if it did not."""
        r = self.rpc(cluster_id, address)
        await asyncio.wait_for(r.coiled_lab_set_timeouts(timeouts=timeouts), SET_TIMEOUTS_WAIT)

    async def usage(self, cluster_id: str, address: str, since: Optional[float]) -> dict[str, Any]:
        """The watchdog's samples; raises OSError / TimeoutError if the scheduler did not answer."""
        r = self.rpc(cluster_id, address)
        return await asyncio.wait_for(r.coiled_lab_usage(since=since), USAGE_WAIT)

    async def retire(self, cluster_id: str, address: Optional[str], names: list[str]) -> None:
        """Move the data off workers about to stop (stopping their machines closes them). A
        failure is logged: the machines are stopped anyway."""
        if not names or not address:
            return
        r = self.rpc(cluster_id, address)
        try:
            await asyncio.wait_for(r.retire_workers(names=names, close_workers=False, remove=False), RETIRE_WAIT)
        except Exception as exc:  # noqa: BLE001 - stopping the machines follows anyway
            logger.warning("graceful retirement of %s failed: %s", names, exc)
