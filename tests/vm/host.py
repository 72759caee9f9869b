"""Small helpers for driving this machine's namespaces: bounded subprocesses, and sockets
created inside a network namespace.

Everything here runs as root on the host. Each subprocess has a timeout, so a wedged
``ip``/``nft``/``mmdebstrap`` fails a test instead of hanging it.
"""

from __future__ import annotations

import ctypes
import os
import socket
import socketserver
import subprocess
import threading
from typing import Optional, Sequence

CLONE_NEWNET = 0x40000000


class HostCommandError(RuntimeError):
    """A host command (``ip``, ``nft``, ...) failed; the message carries its stderr."""


def run(cmd: Sequence[str], *, input: Optional[bytes] = None, timeout: float = 30,
        check: bool = True) -> subprocess.CompletedProcess:
    """Run ``cmd`` with output captured; raise :class:`HostCommandError` on failure."""
    try:
        proc = subprocess.run(list(cmd), input=input, capture_output=True, timeout=timeout)
    except subprocess.TimeoutExpired as exc:
        raise HostCommandError(f"{' '.join(cmd)}: no answer within {timeout} s") from exc
    if check and proc.returncode != 0:
        err = proc.stderr.decode(errors="replace").strip()
        raise HostCommandError(f"{' '.join(cmd)}: exit {proc.returncode}: {err}")
    return proc


def in_netns(netns: str, cmd: Sequence[str], **kwargs) -> subprocess.CompletedProcess:
    """Run ``cmd`` inside the named network namespace (``ip netns exec``)."""
    return run(["ip", "netns", "exec", netns, *cmd], **kwargs)


def socket_in(netns: str, family: int = socket.AF_INET, kind: int = socket.SOCK_STREAM) -> socket.socket:
    """A socket that belongs to ``netns``.

    A socket keeps the network namespace it was created in, and a thread's ``setns``
    affects that thread only. So a short-lived thread of our own enters the namespace,
    creates the socket and ends; every other thread of this process (the ones that
    connect out to the registries, say) stays in the root namespace. Python 3.11's
    ``os`` has no ``setns``; libc's is called through ctypes.
    """
    box: dict[str, object] = {}

    def work() -> None:
        libc = ctypes.CDLL(None, use_errno=True)
        try:
            fd = os.open(f"/run/netns/{netns}", os.O_RDONLY | os.O_CLOEXEC)
        except OSError as exc:
            box["error"] = exc
            return
        try:
            if libc.setns(fd, CLONE_NEWNET) != 0:
                err = ctypes.get_errno()
                raise OSError(err, f"setns into {netns}: {os.strerror(err)}")
            box["socket"] = socket.socket(family, kind)
        except BaseException as exc:  # noqa: BLE001 - handed to the caller's thread
            box["error"] = exc
        finally:
            os.close(fd)

    worker = threading.Thread(target=work, name=f"setns-{netns}", daemon=True)
    worker.start()
    worker.join(10)
    if "error" in box:
        raise box["error"]  # type: ignore[misc]
    if "socket" not in box:
        raise HostCommandError(f"could not create a socket in {netns} within 10 s")
    return box["socket"]  # type: ignore[return-value]


def netns_inode(netns: str) -> Optional[int]:
    """The inode that identifies a named namespace (what ``/proc/PID/ns/net`` links to)."""
    try:
        return os.stat(f"/run/netns/{netns}").st_ino
    except OSError:
        return None


def processes_in_netns(inodes: set[int]) -> list[int]:
    """PIDs of the processes whose network namespace is one of ``inodes``."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            if os.stat(f"/proc/{entry}/ns/net").st_ino in inodes:
                found.append(int(entry))
        except OSError:
            continue
    return found


class ListenerServer(socketserver.ThreadingTCPServer):
    """A threading TCP server around a socket already bound and listening (made in a
    namespace by :func:`socket_in`), served by a daemon thread of its own."""

    daemon_threads = True

    def __init__(self, listener: socket.socket, handler: type, name: str):
        super().__init__(listener.getsockname(), handler, bind_and_activate=False)
        self.socket.close()
        self.socket = listener
        self._thread = threading.Thread(target=self.serve_forever, kwargs={"poll_interval": 0.2}, name=name,
                                        daemon=True)

    def start(self):
        self._thread.start()
        return self

    def close(self) -> None:
        if self._thread.is_alive():
            self.shutdown()
        self.server_close()
