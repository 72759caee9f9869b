"""The VMs' way to "the internet": an HTTP proxy with an allow-list and a package cache.

Emulated VMs have no route out of this machine. Like VMs behind a corporate egress proxy,
they reach the package registries through ``http_proxy``/``https_proxy``, which point
here. The proxy listens inside the emulated network (its socket belongs to the router
namespace) but connects out from this machine's root namespace, and only to an
allow-list: the package registries and the loopback endpoints a test adds (the cloud API
stand-ins). Everything else gets 403. Names are resolved here, so VMs need no DNS.

Immutable files are a pull-through cache on disk, so CI does not download hundreds of MB
per run while VMs still really download them: wheels and sdists (``files.pythonhosted.org``
``/packages/...``, content-addressed) and Debian packages and by-hash indexes
(``deb.debian.org``/``security.debian.org`` ``/pool/`` and ``/by-hash/``, versioned). For
``files.pythonhosted.org`` the proxy terminates the CONNECT itself with a certificate from
the emulator CA (:mod:`.pki`; VMs trust it) and fetches misses upstream over HTTPS,
verified with this machine's CA bundle; apt's plain-HTTP requests are cached as they
pass. ``pypi.org`` (the simple index, which changes) is tunnelled untouched. HTTP/1.1
with keep-alive and Content-Length is all the cache speaks; it offers only http/1.1 in
ALPN and answers single byte ranges.

Byte counters, per host as the VM named it: :meth:`EgressProxy.downloaded` is what came
from upstream (response bodies; raw bytes for tunnels), :meth:`EgressProxy.from_cache`
what the cache served without asking upstream.
"""

from __future__ import annotations

import contextlib
import hashlib
import http.client
import json
import os
import re
import select
import socket
import ssl
import sys
import threading
import urllib.parse
from collections import defaultdict
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Callable, Optional

from .pki import CA, HOST_BUNDLE

REGISTRIES = (("pypi.org", 443), ("files.pythonhosted.org", 443),
              ("deb.debian.org", 80), ("deb.debian.org", 443),
              ("security.debian.org", 80), ("security.debian.org", 443))
MITM_HOSTS = ("files.pythonhosted.org",)  # CONNECTs the proxy terminates itself, to cache
HOP_BY_HOP = {"connection", "keep-alive", "proxy-connection", "proxy-authorization", "proxy-authenticate",
              "te", "trailer", "transfer-encoding", "upgrade"}
CONNECT_TIMEOUT = 15.0  # to an upstream
IO_TIMEOUT = 120.0  # silence on a connection before it is dropped
MAX_UNSIZED_BODY = 64 * 1024 * 1024  # an upstream answer without Content-Length is read whole
CHUNK = 1024 * 1024  # per read and write: an environment image is hundreds of MB


class EgressProxy:
    """The proxy around an already bound, listening socket (created in the router namespace)."""

    def __init__(self, listener: socket.socket, files_cache: Path, ca: CA):
        self.files_cache = files_cache
        self._ca = ca
        self._lock = threading.Lock()
        self._routes: dict[tuple[str, int], tuple[str, int]] = {r: r for r in REGISTRIES}
        self._downloaded: dict[str, int] = defaultdict(int)
        self._from_cache: dict[str, int] = defaultdict(int)
        self._tls: dict[str, ssl.SSLContext] = {}
        self._fetching: dict[str, threading.Lock] = {}
        self._upstream_tls = ssl.create_default_context(cafile=str(HOST_BUNDLE))
        self._server = _Server(listener, self)
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.2},
                                        name="vm-egress-proxy", daemon=True)

    def start(self) -> "EgressProxy":
        self._thread.start()
        return self

    def close(self) -> None:
        """Stop accepting, then cut every open connection (tunnels included)."""
        if self._thread.is_alive():
            self._server.shutdown()
        self._server.server_close()
        self._server.drop_connections()

    # -- the allow-list ------------------------------------------------------------------------
    def allow(self, host: str, port: int, alias: Optional[str] = None) -> None:
        """Let VMs reach ``host:port`` (from this machine's root namespace), also as ``alias:port``."""
        with self._lock:
            self._routes[(host.lower(), int(port))] = (host, int(port))
            if alias:
                self._routes[(alias.lower(), int(port))] = (host, int(port))

    def target(self, host: str, port: int) -> Optional[tuple[str, int]]:
        """Where a request for ``host:port`` goes, or None when it is not allowed."""
        with self._lock:
            return self._routes.get((host.lower(), port))

    # -- counters ------------------------------------------------------------------------------
    def downloaded(self) -> dict[str, int]:
        with self._lock:
            return {k: v for k, v in self._downloaded.items() if v}

    def from_cache(self) -> dict[str, int]:
        with self._lock:
            return {k: v for k, v in self._from_cache.items() if v}

    def reset_counters(self) -> None:
        with self._lock:
            self._downloaded.clear()
            self._from_cache.clear()

    def count(self, host: str, n: int, cached: bool = False) -> None:
        with self._lock:
            (self._from_cache if cached else self._downloaded)[host.lower()] += n

    # -- the cache -----------------------------------------------------------------------------
    def tls_context(self, host: str) -> ssl.SSLContext:
        with self._lock:
            if host not in self._tls:
                self._tls[host] = self._ca.server_context(host)
            return self._tls[host]

    def cached_file(self, host: str, path: str) -> tuple[Path, Path]:
        key = hashlib.sha256(f"{host}{path}".encode()).hexdigest()
        directory = self.files_cache / key[:2]
        return directory / key, directory / f"{key}.json"

    def fetch_lock(self, key: str) -> threading.Lock:
        with self._lock:
            return self._fetching.setdefault(key, threading.Lock())

    def upstream(self, host: str) -> http.client.HTTPSConnection:
        return http.client.HTTPSConnection(host, 443, context=self._upstream_tls, timeout=IO_TIMEOUT)


class _Server(ThreadingHTTPServer):
    """A threading HTTP server on a socket made elsewhere (in another network namespace)."""

    daemon_threads = True

    def __init__(self, listener: socket.socket, proxy: EgressProxy):
        super().__init__(listener.getsockname(), _ProxyHandler, bind_and_activate=False)
        self.socket.close()
        self.socket = listener
        self.proxy = proxy
        self._open: set[socket.socket] = set()
        self._open_lock = threading.Lock()

    def server_bind(self) -> None:  # never called: the socket comes bound
        raise AssertionError("bound by the caller")

    def handle_error(self, request, client_address) -> None:
        """A client that hung up before its answer (uv gives up on a host the proxy cannot
        reach) is no error of the proxy's; anything else is printed, as socketserver does."""
        if isinstance(sys.exc_info()[1], (BrokenPipeError, ConnectionResetError)):
            return
        super().handle_error(request, client_address)

    def process_request(self, request, client_address) -> None:
        self.track(request)
        super().process_request(request, client_address)

    def shutdown_request(self, request) -> None:
        self.untrack(request)
        super().shutdown_request(request)

    def track(self, sock: socket.socket) -> None:
        """Count ``sock`` among the open connections that :meth:`drop_connections` cuts."""
        with self._open_lock:
            self._open.add(sock)

    def untrack(self, sock: socket.socket) -> None:
        with self._open_lock:
            self._open.discard(sock)

    def drop_connections(self) -> None:
        with self._open_lock:
            pending, self._open = list(self._open), set()
        for sock in pending:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            with contextlib.suppress(OSError):
                sock.close()


class _QuietHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    timeout = IO_TIMEOUT

    def log_message(self, *args) -> None:
        pass

    def answer(self, status: int, text: str, extra: Optional[dict[str, str]] = None) -> None:
        body = (text + "\n").encode()
        self.send_response(status)
        self.send_header("Content-Type", "text/plain; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        for name, value in (extra or {}).items():
            self.send_header(name, value)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def read_body(self) -> Optional[bytes]:
        """The request body (Content-Length or chunked), or None when there is none."""
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            parts = []
            while True:
                size = int(self.rfile.readline(1024).split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline(1024) not in (b"\r\n", b"\n", b""):
                        pass
                    return b"".join(parts)
                parts.append(_read_exactly(self.rfile, size))
                self.rfile.readline(1024)
        length = self.headers.get("Content-Length")
        return _read_exactly(self.rfile, int(length)) if length else None

    def serve_cached(self, host: str, path: str, url: str, connect: Callable[[], http.client.HTTPConnection]
                     ) -> None:
        """Answer GET/HEAD of an immutable file from the disk cache, filling it first if needed."""
        proxy: EgressProxy = self.server.proxy  # type: ignore[attr-defined]
        data, meta = proxy.cached_file(host, path)
        hit = data.exists() and meta.exists()
        if not hit:
            with proxy.fetch_lock(data.name):  # two VMs asking at once: one download
                hit = data.exists() and meta.exists()
                if not hit and not self._fill(proxy, host, path, url, data, meta, connect):
                    return
        info = json.loads(meta.read_text())
        self._send_file(proxy, host, data, info.get("content_type") or "application/octet-stream", cached=hit)

    def _fill(self, proxy: EgressProxy, host: str, path: str, url: str, data: Path, meta: Path,
              connect: Callable[[], http.client.HTTPConnection]) -> bool:
        """Fetch the file upstream into the cache; False when upstream's answer was passed on instead."""
        conn = connect()
        with contextlib.closing(conn):
            try:
                conn.request("GET", path, headers={"Host": host, "Accept": "*/*", "Accept-Encoding": "identity",
                                                   "User-Agent": self.headers.get("User-Agent", "coiled-lab-vm")})
                response = conn.getresponse()
            except OSError as exc:
                self.answer(502, f"{host} did not answer: {exc}")
                return False
            if response.status != 200:
                _pass_on(self, response, lambda n: proxy.count(host, n), head=self.command == "HEAD")
                return False
            data.parent.mkdir(parents=True, exist_ok=True)
            partial = data.with_name(f".{data.name}.{os.getpid()}.{threading.get_ident()}")
            try:
                size = 0
                with open(partial, "wb") as out:
                    while chunk := response.read(CHUNK):
                        out.write(chunk)
                        size += len(chunk)
                        proxy.count(host, len(chunk))
                if response.length not in (None, 0):
                    raise OSError(f"{url}: the connection ended {response.length} bytes early")
                meta.write_text(json.dumps({"url": url, "size": size,
                                            "content_type": response.getheader("Content-Type")}))
                os.replace(partial, data)
            except OSError as exc:
                with contextlib.suppress(OSError):
                    partial.unlink()
                self.answer(502, f"fetching {url} failed: {exc}")
                return False
        return True

    def _send_file(self, proxy: EgressProxy, host: str, data: Path, content_type: str, cached: bool) -> None:
        size = data.stat().st_size
        span = _byte_range(self.headers.get("Range"), size)
        if span == (-1, -1):
            return self.answer(416, "range not satisfiable", {"Content-Range": f"bytes */{size}"})
        start, end = span if span else (0, size - 1)
        self.send_response(206 if span else 200)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(end - start + 1))
        self.send_header("Accept-Ranges", "bytes")
        if span:
            self.send_header("Content-Range", f"bytes {start}-{end}/{size}")
        self.end_headers()
        if self.command == "HEAD":
            return
        left = end - start + 1
        with open(data, "rb") as source:
            source.seek(start)
            while left > 0:
                chunk = source.read(min(CHUNK, left))
                if not chunk:
                    break
                self.wfile.write(chunk)
                left -= len(chunk)
                if cached:
                    proxy.count(host, len(chunk), cached=True)


class _ProxyHandler(_QuietHandler):
    """CONNECT (tunnel, or the package cache) and absolute-URI plain HTTP requests."""

    rbufsize = 0  # unbuffered: no byte after a CONNECT's headers may sit in a read buffer

    server: _Server

    def do_CONNECT(self) -> None:
        self.close_connection = True
        host, port = _split_authority(self.path)
        target = self.server.proxy.target(host, port) if host else None
        if target is None:
            return self.answer(403, f"egress to {self.path} is not allowed from emulated VMs")
        if host.lower() in MITM_HOSTS and port == 443:
            self._established()
            return self._serve_cache(host.lower())
        try:
            upstream = socket.create_connection(target, timeout=CONNECT_TIMEOUT)
        except OSError as exc:
            return self.answer(502, f"cannot reach {self.path}: {exc}")
        with upstream:
            upstream.settimeout(IO_TIMEOUT)
            self._established()
            _relay(self.connection, upstream, lambda n: self.server.proxy.count(host, n))

    def _established(self) -> None:
        self.send_response(200, "Connection established")
        self.end_headers()

    def _serve_cache(self, host: str) -> None:
        try:
            tls = self.server.proxy.tls_context(host).wrap_socket(self.connection, server_side=True)
        except (ssl.SSLError, OSError):
            return
        handler = type("CacheHandler", (_CacheHandler,), {"host": host})
        self.server.track(tls)  # the plain socket was detached into it
        try:
            handler(tls, self.client_address, self.server)
        except (OSError, ssl.SSLError):
            pass
        finally:
            self.server.untrack(tls)
            with contextlib.suppress(OSError):
                tls.close()

    def _forward(self) -> None:
        url = urllib.parse.urlsplit(self.path)
        if url.scheme != "http" or not url.hostname:
            return self.answer(400, "a proxy request needs an absolute http:// URL")
        try:
            port = url.port or 80
        except ValueError:
            return self.answer(400, "bad port")
        target = self.server.proxy.target(url.hostname, port)
        if target is None:
            return self.answer(403, f"egress to {url.hostname}:{port} is not allowed from emulated VMs")
        if self.command in ("GET", "HEAD") and cacheable(url.hostname, url.path):
            return self.serve_cached(url.hostname.lower(), url.path, self.path,
                                     lambda: http.client.HTTPConnection(*target, timeout=IO_TIMEOUT))
        body = self.read_body()
        conn = http.client.HTTPConnection(*target, timeout=IO_TIMEOUT)
        try:
            conn.putrequest(self.command, urllib.parse.urlunsplit(("", "", url.path or "/", url.query, "")),
                            skip_host=True, skip_accept_encoding=True)
            for name, value in self.headers.items():
                if name.lower() not in HOP_BY_HOP and name.lower() != "content-length":
                    conn.putheader(name, value)
            if body is not None:
                conn.putheader("Content-Length", str(len(body)))
            conn.putheader("Connection", "close")
            conn.endheaders(body)
            response = conn.getresponse()
        except OSError as exc:
            conn.close()
            return self.answer(502, f"{url.hostname}:{port} did not answer: {exc}")
        with contextlib.closing(conn):
            _pass_on(self, response, lambda n: self.server.proxy.count(url.hostname, n))

    do_GET = do_HEAD = do_POST = do_PUT = do_DELETE = do_PATCH = do_OPTIONS = _forward


class _CacheHandler(_QuietHandler):
    """HTTP/1.1 over the terminated TLS of one CONNECT to a cached host."""

    host = ""
    server: _Server

    def do_GET(self) -> None:
        if not cacheable(self.host, self.path):  # not an immutable file: ask upstream, keep nothing
            return self._uncached()
        self.serve_cached(self.host, self.path, f"https://{self.host}{self.path}",
                          lambda: self.server.proxy.upstream(self.host))

    do_HEAD = do_GET

    def _uncached(self) -> None:
        conn = self.server.proxy.upstream(self.host)
        with contextlib.closing(conn):
            try:
                conn.request(self.command, self.path, headers={
                    k: v for k, v in self.headers.items() if k.lower() not in HOP_BY_HOP and k.lower() != "host"})
                response = conn.getresponse()
            except OSError as exc:
                return self.answer(502, f"{self.host} did not answer: {exc}")
            _pass_on(self, response, lambda n: self.server.proxy.count(self.host, n), head=self.command == "HEAD")


def cacheable(host: str, path: str) -> bool:
    """Immutable files: wheels and sdists (content-addressed paths), Debian packages (the
    pool's versioned names) and Debian indexes fetched by hash."""
    host = host.lower()
    if host == "files.pythonhosted.org":
        return path.startswith("/packages/")
    if host in ("deb.debian.org", "security.debian.org"):
        return "/pool/" in path or "/by-hash/" in path
    return False


def _pass_on(handler: BaseHTTPRequestHandler, response: http.client.HTTPResponse, count: Callable[[int], None],
             head: Optional[bool] = None) -> None:
    """Send an upstream answer to the client with a Content-Length (read whole when it had none)."""
    head = handler.command == "HEAD" if head is None else head
    bodiless = head or response.status in (204, 304) or 100 <= response.status < 200
    body: Optional[bytes] = None
    if not bodiless and response.length is None:  # chunked or until-close: read it whole, bounded
        body = response.read(MAX_UNSIZED_BODY + 1)
        count(len(body))
        if len(body) > MAX_UNSIZED_BODY:
            raise OSError("an upstream answer without Content-Length was too large")
    handler.send_response_only(response.status, response.reason)
    for name, value in response.getheaders():
        if name.lower() not in HOP_BY_HOP and not (name.lower() == "content-length" and body is not None):
            handler.send_header(name, value)
    if body is not None:
        handler.send_header("Content-Length", str(len(body)))
    handler.end_headers()
    if bodiless:
        return
    if body is not None:
        handler.wfile.write(body)
        return
    while chunk := response.read(CHUNK):
        count(len(chunk))
        handler.wfile.write(chunk)
    if response.length:
        handler.close_connection = True  # upstream ended early: the client must not wait for more


def _relay(client: socket.socket, upstream: socket.socket, count: Callable[[int], None]) -> None:
    """Copy bytes both ways until both sides have finished or IO_TIMEOUT of silence."""
    open_ends = {client: upstream, upstream: client}
    while open_ends:
        readable, _, _ = select.select(list(open_ends), [], [], IO_TIMEOUT)
        if not readable:
            return
        for source in readable:
            sink = open_ends[source]
            try:
                data = source.recv(CHUNK)
            except OSError:
                return
            if not data:
                del open_ends[source]
                with contextlib.suppress(OSError):
                    sink.shutdown(socket.SHUT_WR)
                continue
            if source is upstream:
                count(len(data))
            try:
                sink.sendall(data)
            except OSError:
                return


def _split_authority(authority: str) -> tuple[str, int]:
    match = re.fullmatch(r"\[?([^\[\]]+?)\]?:(\d{1,5})", authority)
    if not match:
        return "", 0
    return match.group(1), int(match.group(2))


def _byte_range(header: Optional[str], size: int) -> Optional[tuple[int, int]]:
    """One ``bytes=`` range as (first, last); None for none/unsupported; (-1, -1) if unsatisfiable."""
    if not header:
        return None
    match = re.fullmatch(r"\s*bytes=(\d*)-(\d*)\s*", header)
    if not match or match.group(1) == match.group(2) == "":
        return None
    first, last = match.groups()
    if first == "":
        start, end = max(size - int(last), 0), size - 1
    else:
        start, end = int(first), min(int(last), size - 1) if last else size - 1
    if start >= size or start > end:
        return (-1, -1)
    return start, end


def _read_exactly(stream, n: int) -> bytes:
    parts, left = [], n
    while left > 0:
        chunk = stream.read(min(left, CHUNK))
        if not chunk:
            raise ConnectionError("the client closed the connection inside a request body")
        parts.append(chunk)
        left -= len(chunk)
    return b"".join(parts)
