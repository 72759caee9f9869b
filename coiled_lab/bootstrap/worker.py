"""What only a worker VM does (:mod:`coiled_lab.bootstrap.vm` imports it on workers, the
only VMs it is shipped to): wait for the scheduler, which boots in parallel, and on a spot
machine retire the worker through the scheduler once the cloud announces that it takes
the machine back, so its data moves to the others before the machine goes.

Retiring needs distributed, which only the cluster's environment has, so it runs as
``<environment's python> -m coiled_lab.bootstrap.worker config.json <worker name>``; the
rest runs under the image's python3, with the standard library only.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable, Optional

from .packages import run


def wait_for_scheduler(address: str, timeout: float, say: Callable[..., None]) -> bool:
    """Wait until the scheduler accepts TCP connections (it boots in parallel with us)."""
    host, port = address.split("://", 1)[-1].rsplit(":", 1)
    deadline = time.monotonic() + timeout
    say(f"waiting for the scheduler at {address}")
    while time.monotonic() < deadline:
        try:
            with socket.create_connection((host, int(port)), timeout=2):
                return True
        except OSError:
            time.sleep(0.25)
    say(f"the scheduler at {address} did not answer within {timeout:g}s", "ERROR")
    return False


def watch_spot(notice_of: Callable[[], Optional[str]], interval: float, proc: subprocess.Popen,
               say: Callable[..., None], retire_worker: Callable[[], None]) -> None:
    """Poll for a spot interruption notice (EC2 gives two minutes, GCE 30 seconds) while
    ``proc`` (the dask worker) runs; then retire it gracefully, else stop it."""
    while proc.poll() is None:
        try:
            notice = notice_of()
        except OSError:
            notice = None
        if notice:
            say(f"spot interruption notice {notice}; retiring this worker", "WARNING")
            try:
                retire_worker()
            except Exception as exc:  # noqa: BLE001 - then stop it less gracefully
                say(f"graceful retirement failed ({type(exc).__name__}: {exc}); stopping the worker", "ERROR")
                proc.terminate()
            return
        time.sleep(interval)


def retire_with(python: str, config_path: Path, name: str, env: dict[str, str], emit: Callable[[str], None]) -> None:
    """:func:`retire` in a process of ``python`` (the environment's); raise if it failed."""
    status, lines = run([python, "-m", "coiled_lab.bootstrap.worker", str(config_path), name], env, emit)
    if status:
        raise RuntimeError(f"exit status {status}: {' '.join(lines[-1:])}")


def retire(config: dict[str, Any], workdir: Path, name: str) -> None:
    """Ask the scheduler to move worker ``name``'s data elsewhere and close it."""
    import asyncio

    from distributed.core import rpc
    from distributed.security import Security

    cert, key = str(workdir / "tls-cert.pem"), str(workdir / "tls-key.pem")
    security = Security(tls_ca_file=cert, tls_client_cert=cert, tls_client_key=key, require_encryption=True)

    async def _retire() -> None:
        async with rpc(config["scheduler_address"], connection_args=security.get_connection_args("client")) as r:
            await asyncio.wait_for(r.retire_workers(names=[name], close_workers=True, remove=True), 90)

    asyncio.run(_retire())


if __name__ == "__main__":
    path = Path(sys.argv[1]).resolve()
    retire(json.loads(path.read_text()), path.parent, sys.argv[2])
