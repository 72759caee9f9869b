"""A local HTTP server on 127.0.0.1 for the fakes of cloud APIs that no emulator speaks
(price lists, the billing catalog, Google's token endpoint): started in a thread, every
request recorded in ``requests`` by the subclass's handler, closed by the test."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class LocalHTTP:
    def __init__(self) -> None:
        self.requests: list[dict] = []
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        """The request handler class; it reaches this object through a closure."""
        raise NotImplementedError


class JSONHandler(BaseHTTPRequestHandler):
    """A quiet handler that answers JSON, as Google's REST APIs do."""

    def log_message(self, *args) -> None:
        pass

    def answer(self, status: int, body: dict) -> None:
        out = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json; charset=UTF-8")
        self.send_header("Content-Length", str(len(out)))
        self.end_headers()
        self.wfile.write(out)
