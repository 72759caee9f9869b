"""The client of the Jupyter server extension: REST for the verbs, a WebSocket for events.

A kernel started by a Jupyter server that runs coiled-lab's extension inherits
``COILED_LAB_API_URL`` and ``COILED_LAB_API_TOKEN``; another process of the same user
finds that server through the runtime file it keeps in the state dir (``server.json``,
0600). :class:`APIClient` offers the same async surface as
:class:`~coiled_lab.control.inprocess.InProcessControl` and raises the same exceptions, so
``Cluster``, ``%coiled`` and the CLI behave the same with or without a server.

Only the standard library is imported at module level; tornado (the HTTP and WebSocket
client) and the control plane's modules load when a client is made, so that
``import coiled_lab`` stays cheap.
"""

from __future__ import annotations

import asyncio
import json
import os
import threading
import time
import urllib.parse
from pathlib import Path
from typing import Any, AsyncIterator, Awaitable, Optional, TypeVar

ENV_URL = "COILED_LAB_API_URL"
ENV_TOKEN = "COILED_LAB_API_TOKEN"
AUTH_SCHEME = "coiled-lab"  # Authorization: coiled-lab <token>
RUNTIME_FILE = "server.json"
API_PATH = "coiled-lab/api/"

from .errors import APIError, from_answer

T = TypeVar("T")


# == finding a server ===================================================================
def write_runtime_file(state_dir: Path, url: str, token: str) -> Path:
    """Tell other processes of this user where the server managing ``state_dir`` listens."""
    path = Path(state_dir) / RUNTIME_FILE
    tmp = path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump({"url": url, "token": token, "pid": os.getpid()}, f)
    os.replace(tmp, path)
    return path


def read_runtime_file(state_dir: Path) -> Optional[dict[str, Any]]:
    """The url and token of the live server for ``state_dir``; None when there is no file
    or its process is gone (a server that was killed cannot remove it)."""
    info = _read_json(Path(state_dir) / RUNTIME_FILE)
    if not info or not isinstance(info.get("url"), str) or not isinstance(info.get("token"), str):
        return None
    pid = info.get("pid")
    return info if isinstance(pid, int) and _alive(pid) else None


def remove_runtime_file(state_dir: Path, token: str) -> None:
    """Remove the runtime file if it is still the one this server (``token``) wrote."""
    path = Path(state_dir) / RUNTIME_FILE
    info = _read_json(path)
    if info and info.get("token") == token:
        path.unlink(missing_ok=True)


def _read_json(path: Path) -> Optional[dict[str, Any]]:
    try:
        with open(path) as f:
            data = json.load(f)
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


# == errors ===============================================================================
def _raise_for(status: int, body: Any, subject: Optional[str]) -> None:
    """Raise again what the server raised (the one table's ``code``)."""
    raise from_answer(status, body, subject)


# == the client ===========================================================================
class APIClient:
    """The control plane behind a Jupyter server, with :class:`InProcessControl`'s surface.

    Requests run on this client's own event loop in a daemon thread, so the client works
    from synchronous code (``run``), from the Cluster's loop thread and from a notebook's
    running loop alike.
    """

    _shared: dict[tuple[str, str], "APIClient"] = {}
    _shared_lock = threading.Lock()

    def __init__(self, url: str, token: str, request_timeout: float = 60, reconnect_for: float = 60):
        from .loopthread import LoopThread

        self.url = url.rstrip("/") + "/"
        self._token = token
        self._accepted = False  # the server took our token once: a refusal later means it restarted
        self.request_timeout = request_timeout
        self.reconnect_for = reconnect_for  # how long a lost events socket keeps retrying
        self.thread = LoopThread(name="coiled-lab-api")
        self._http: Any = None

    @classmethod
    def shared(cls, url: str, token: str) -> "APIClient":
        """One client (and one loop thread) per server for the whole process."""
        with cls._shared_lock:
            client = cls._shared.get((url, token))
            if client is None:
                client = cls._shared[(url, token)] = cls(url, token)
            return client

    @classmethod
    def reset_shared(cls) -> None:
        with cls._shared_lock:
            clients = list(cls._shared.values())
            cls._shared.clear()
        for client in clients:
            client.close()

    def close(self) -> None:
        self.thread.run(self._close_http())
        self.thread.stop()

    async def _close_http(self) -> None:
        if self._http is not None:
            self._http.close()
            self._http = None

    def run(self, coro: Awaitable[T], timeout: Optional[float] = None) -> T:
        """Run one of this client's coroutines from synchronous code."""
        return self.thread.run(coro, timeout)

    @property
    def server_url(self) -> str:
        """The Jupyter server's base URL (what the API URL hangs from)."""
        return self.url[: -len(API_PATH)] if self.url.endswith(API_PATH) else self.url

    def dashboard_url(self, cluster: dict[str, Any]) -> Optional[str]:
        """The dashboard through the Jupyter server, as a path on it: a browser resolves it
        against the page it shows (the Jupyter server, whatever its public address, HTTPS
        and auth), where the API URL kernels use is this machine's loopback address."""
        if not cluster.get("dashboard"):
            return None
        base = urllib.parse.urlsplit(self.server_url).path
        return f"{base}coiled-lab/clusters/{_quote(cluster['id'])}/dashboard/status"

    # -- the Control surface -------------------------------------------------------------
    async def create(self, spec: dict[str, Any], environment: Any = None) -> dict[str, Any]:
        return await self._call("POST", "clusters", body={**spec, **({"environment": environment}
                                                                     if environment is not None else {})})

    async def stage_environment(self, environment: dict[str, Any]) -> dict[str, Any]:
        return await self._call("POST", "environments", body=environment)

    async def environment(self, env_hash: str, backend: str, region: Optional[str] = None) -> dict[str, Any]:
        params = {"backend": backend, **({"region": region} if region else {})}
        return await self._call("GET", f"environments/{env_hash}", params=params)

    async def get(self, name_or_id: str) -> dict[str, Any]:
        return await self._call("GET", f"clusters/{_quote(name_or_id)}", subject=name_or_id)

    async def list(self, live_only: bool = False) -> list[dict[str, Any]]:
        reply = await self._call("GET", "clusters", params={"live": "true" if live_only else None})
        return reply["clusters"]

    async def scale(self, name_or_id: str, n_workers: int) -> dict[str, Any]:
        return await self._call("PATCH", f"clusters/{_quote(name_or_id)}", body={"n_workers": n_workers}, subject=name_or_id)

    async def adapt(self, name_or_id: str, bounds: Optional[list[int]]) -> dict[str, Any]:
        return await self._call("PATCH", f"clusters/{_quote(name_or_id)}", body={"adaptive": bounds}, subject=name_or_id)

    async def stop(self, name_or_id: str) -> dict[str, Any]:
        return await self._call("DELETE", f"clusters/{_quote(name_or_id)}", subject=name_or_id)

    async def logs(
        self,
        name_or_id: str,
        since: Any = None,
        instance: Optional[str] = None,
        q: Optional[str] = None,
        level: Optional[str] = None,
        limit: Optional[int] = 1000,
    ) -> list[dict[str, Any]]:
        params = {"since": since, "instance": instance, "q": q, "level": level, "limit": limit or 0}
        reply = await self._call("GET", f"clusters/{_quote(name_or_id)}/logs", params=params, subject=name_or_id)
        return reply["logs"]

    async def connection(self, name_or_id: str) -> dict[str, Any]:
        return await self._call("GET", f"clusters/{_quote(name_or_id)}/connection", subject=name_or_id)

    async def notifications(self, name_or_id: str) -> list[dict[str, Any]]:
        path = f"clusters/{_quote(name_or_id)}/notifications"
        return (await self._call("GET", path, subject=name_or_id))["notifications"]

    async def usage(self, name_or_id: str, since: Optional[float] = None) -> dict[str, Any]:
        return await self._call("GET", f"clusters/{_quote(name_or_id)}/usage", params={"since": since},
                                subject=name_or_id)

    async def catalog(self, backend: Optional[str] = None, region: Optional[str] = None) -> dict[str, Any]:
        return await self._call("GET", "catalog", params={"backend": backend, "region": region})

    async def estimate(self, spec: dict[str, Any]) -> dict[str, Any]:
        return await self._call("POST", "estimate", body=spec)

    async def schema(self, backend: Optional[str] = None) -> dict[str, Any]:
        """ClusterSpec's JSON schema with the server's defaults and limits (forms are built from it)."""
        return await self._call("GET", "schema", params={"backend": backend})

    async def cleanup(self, dry_run: bool = False) -> dict[str, Any]:
        return await self._call("POST", "cleanup", body={"dry_run": dry_run})

    async def wait(
        self, name_or_id: str, states: tuple[str, ...] = ("running",), timeout: Optional[float] = None
    ) -> dict[str, Any]:
        """Wait until the cluster reaches one of ``states`` (or a final state); return it."""
        return await self.thread.call(asyncio.wait_for(self._wait(name_or_id, tuple(states)), timeout))

    async def events(self, cluster_id: Optional[str] = None) -> AsyncIterator[Any]:
        """Events as they happen; after a lost connection, resumes after the last one seen."""
        from .control.events import Event

        stream = _EventStream(self, cluster_id)
        try:
            while True:
                data = await self.thread.call(stream.next())
                if data is None:
                    return
                yield Event.from_json(data)
        finally:
            self.thread.loop.call_soon_threadsafe(stream.close)

    # -- transport (runs on this client's loop thread) -------------------------------------
    async def _call(
        self, method: str, path: str, body: Any = None, params: Optional[dict[str, Any]] = None, subject: Optional[str] = None
    ) -> Any:
        return await self.thread.call(self._request(method, path, body, params, subject))

    def _headers(self) -> dict[str, str]:
        return {"Authorization": f"{AUTH_SCHEME} {self._token}", "Content-Type": "application/json"}

    def _new_token(self) -> bool:
        """A restarted server makes a new kernel token: take it from the runtime file the
        server keeps in the state dir, if that names this server's URL and the old token
        was once accepted (a token that never worked stays refused). True if it changed."""
        from . import config

        if not self._accepted:
            return False
        server = read_runtime_file(config.state_dir())
        if server is None or server["url"].rstrip("/") + "/" != self.url or server["token"] == self._token:
            return False
        self._token = server["token"]
        return True

    def _url(self, path: str, params: Optional[dict[str, Any]] = None) -> str:
        query = urllib.parse.urlencode({k: v for k, v in (params or {}).items() if v is not None})
        return self.url + path + (f"?{query}" if query else "")

    async def _request(
        self, method: str, path: str, body: Any, params: Optional[dict[str, Any]], subject: Optional[str]
    ) -> Any:
        from tornado.httpclient import AsyncHTTPClient, HTTPClientError, HTTPRequest

        if self._http is None:
            self._http = AsyncHTTPClient(force_instance=True)
        payload = json.dumps(body if body is not None else {}) if method in ("POST", "PUT", "PATCH") else None
        request = HTTPRequest(
            self._url(path, params), method=method, headers=self._headers(), body=payload,
            request_timeout=self.request_timeout,
        )
        try:
            response = await self._http.fetch(request, raise_error=False)
            if response.code == 403 and self._new_token():  # the server restarted
                request.headers.update(self._headers())
                response = await self._http.fetch(request, raise_error=False)
            self._accepted = self._accepted or response.code != 403
        except (HTTPClientError, OSError) as exc:
            raise APIError(599, f"the coiled-lab server at {self.url} is unreachable: {exc}") from None
        try:
            data = json.loads(response.body) if response.body else None
        except ValueError:
            data = None
        if response.code >= 400:
            _raise_for(response.code, data, subject)
        return data

    async def _open_events(self, cluster: Optional[str], after: Optional[int]):
        """One events WebSocket; errors are mapped like REST answers (5xx/unreachable: APIError)."""
        from tornado.httpclient import HTTPClientError, HTTPRequest
        from tornado.websocket import websocket_connect

        url = "ws" + self._url("events", {"cluster": cluster, "after": after})[len("http"):]
        request = HTTPRequest(url, headers=self._headers(), connect_timeout=self.request_timeout)
        try:
            return await websocket_connect(request)
        except HTTPClientError as exc:
            body = None
            if exc.response is not None and exc.response.body:
                try:
                    body = json.loads(exc.response.body)
                except ValueError:
                    body = None
            _raise_for(exc.code, body, cluster)
        except OSError as exc:
            raise APIError(599, f"the coiled-lab server at {self.url} is unreachable: {exc}") from None

    async def _connect(self, cluster: Optional[str], after: Optional[int]):
        """Open the events socket, retrying with backoff while the server is away (a restart)."""
        delay, give_up = 0.1, time.monotonic() + self.reconnect_for
        while True:
            try:
                socket = await self._open_events(cluster, after)
                self._accepted = True
                return socket
            except APIError as exc:
                # A restarted server refuses the old token until its runtime file names the
                # new one (written once its manager runs): keep trying with the file's.
                restarted = exc.status == 403 and self._accepted
                if (exc.status < 500 and not restarted) or time.monotonic() > give_up:
                    raise
                if restarted and self._new_token():
                    continue
            await asyncio.sleep(delay)
            delay = min(delay * 2, 5.0)

    async def _wait(self, name_or_id: str, states: tuple[str, ...]) -> dict[str, Any]:
        wanted = set(states) | {"stopped", "error"}
        socket = None
        try:
            while True:
                if socket is None:
                    # Subscribe before reading the state, so no transition falls in between.
                    socket = await self._connect(name_or_id, None)
                record = await self._request("GET", f"clusters/{_quote(name_or_id)}", None, None, name_or_id)
                if record["status"] in wanted:
                    return record
                while True:
                    message = await socket.read_message()
                    if message is None:  # lost: reconnect, then read the state again
                        socket = None
                        break
                    if json.loads(message).get("kind") == "state":
                        break
        finally:
            if socket is not None:
                socket.close()


class _EventStream:
    """The socket behind one ``events()`` consumer: reconnects with backoff and resumes
    after the last persisted event it delivered, dropping any replayed twice."""

    def __init__(self, client: APIClient, cluster_id: Optional[str]):
        self.client = client
        self.cluster_id = cluster_id
        self.last_seq: Optional[int] = None
        self.socket: Any = None
        self.closed = False

    async def next(self) -> Optional[dict[str, Any]]:
        delay = 0.1
        while not self.closed:
            if self.socket is None:
                self.socket = await self.client._connect(self.cluster_id, self.last_seq)
            message = await self.socket.read_message()
            if message is None:  # the server closed it (restart, shutdown): come back later
                self.socket = None
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)
                continue
            event = json.loads(message)
            seq = event.get("seq")
            if seq is not None:
                if self.last_seq is not None and seq <= self.last_seq:
                    continue
                self.last_seq = seq
            return event
        return None

    def close(self) -> None:
        self.closed = True
        if self.socket is not None:
            self.socket.close()
            self.socket = None


def _quote(name_or_id: str) -> str:
    return urllib.parse.quote(str(name_or_id), safe="")
