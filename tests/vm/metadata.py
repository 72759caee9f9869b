"""The instance metadata service at 169.254.169.254:80, shared by every emulated VM.

On EC2 and GCE every VM asks the same link-local address and gets answers about itself:
the cloud knows who asks from where the request comes. Here one listening socket inside
the router namespace plays that role, and each connection is handed to the handler class
registered for the client's (private) address. The handler classes are ordinary
``http.server.BaseHTTPRequestHandler`` subclasses, so the emulators' existing IMDSv2 and
GCE metadata handlers serve requests unchanged (they are constructed as
``Handler(request, client_address, server)``, as ``socketserver`` always does).
"""

from __future__ import annotations

import socket
import threading
from http.server import BaseHTTPRequestHandler
from typing import Optional

from .host import ListenerServer

ADDRESS = "169.254.169.254"
PORT = 80


class MetadataService(ListenerServer):
    """Dispatches each connection by source address; unknown sources are closed unanswered."""

    def __init__(self, listener: socket.socket):
        super().__init__(listener, BaseHTTPRequestHandler, "vm-metadata")
        self._handlers: dict[str, type[BaseHTTPRequestHandler]] = {}
        self._lock = threading.Lock()

    def register(self, address: str, handler: type[BaseHTTPRequestHandler]) -> None:
        with self._lock:
            self._handlers[address] = handler

    def unregister(self, address: str) -> None:
        with self._lock:
            self._handlers.pop(address, None)

    def handler_for(self, address: str) -> Optional[type[BaseHTTPRequestHandler]]:
        with self._lock:
            return self._handlers.get(address)

    def finish_request(self, request, client_address) -> None:
        handler = self.handler_for(client_address[0])
        if handler is not None:
            request.settimeout(30)  # a stuck client must not hold a thread forever
            handler(request, client_address, self)
