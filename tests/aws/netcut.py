"""A TCP relay whose network can be cut: connections refused, and reset when they speak.

Put in front of the AWS proxy, it stands for the VM's network link. The proxy answers
with HTTP errors (throttling); this relay takes the link away below HTTP, as a cable pulled
or a route lost would: while cut, new connections are refused (the port is closed) and a
kept-alive connection that sends a request is reset (RST) without forwarding a byte, so
nothing reaches AWS. A request already forwarded still gets its answer.
"""

from __future__ import annotations

import selectors
import socket
import struct
import threading
from typing import Optional


class NetCut:
    def __init__(self, upstream: tuple[str, int]):
        self.upstream = upstream
        self._listener = self._listen(0)
        self.port = self._listener.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self._cut = threading.Event()
        self._lock = threading.Lock()
        self._closed = False
        self.refused_while_cut = 0  # connections reset because they spoke during a cut
        self._accepting = threading.Thread(target=self._accept, args=(self._listener,), daemon=True)
        self._accepting.start()

    @staticmethod
    def _listen(port: int) -> socket.socket:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", port))
        sock.listen(64)
        return sock

    def cut(self) -> None:
        """Refuse and reset from now on."""
        with self._lock:
            self._cut.set()
            self._listener.close()  # the accept thread ends; connects are refused

    def restore(self) -> None:
        """The link is back: listen again on the same port."""
        with self._lock:
            self._listener = self._listen(self.port)
            self._cut.clear()
            self._accepting = threading.Thread(target=self._accept, args=(self._listener,), daemon=True)
            self._accepting.start()

    def close(self) -> None:
        with self._lock:
            self._closed = True
            self._listener.close()

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return  # cut or closed
            threading.Thread(target=self._relay, args=(client,), daemon=True).start()

    def _relay(self, client: socket.socket) -> None:
        upstream: Optional[socket.socket] = None
        try:
            upstream = socket.create_connection(self.upstream)
            selector = selectors.DefaultSelector()
            selector.register(client, selectors.EVENT_READ, upstream)
            selector.register(upstream, selectors.EVENT_READ, client)
            while True:
                for key, _ in selector.select(timeout=1.0):
                    source: socket.socket = key.fileobj  # type: ignore[assignment]
                    data = source.recv(65536)
                    if source is client and self._cut.is_set():
                        self.refused_while_cut += 1
                        _reset(client)
                        return
                    if not data:
                        return
                    key.data.sendall(data)
                if self._closed:
                    return
        except OSError:
            return
        finally:
            for sock in (client, upstream):
                if sock is not None:
                    try:
                        sock.close()
                    except OSError:
                        pass


def _reset(sock: socket.socket) -> None:
    """Close with an RST rather than a FIN, as a broken path looks to the peer."""
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()
