"""A real Jupyter server (pytest-jupyter, in this process) with coiled_lab_server loaded and
a state dir of its own. Helpers speak to it over real HTTP and WebSockets.

pytest-jupyter's fixtures and its hooks for coroutine tests are imported here rather than
through ``pytest_plugins`` (only allowed in a root conftest), so they apply to this
directory alone.
"""

from __future__ import annotations

import json
import signal
from pathlib import Path
from typing import Any, Optional

import dask.config
import pytest
from pytest_jupyter.jupyter_server import *  # noqa: F401,F403
from traitlets.config import Config

from coiled_lab_server.service import Service

from ..conftest import cluster_processes


@pytest.fixture
def state_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """The state dir, for the server in this process (dask config) and for the processes it
    starts, kernels included (environment)."""
    path = tmp_path / "state"
    path.mkdir(mode=0o700)
    monkeypatch.setenv("DASK_COILED_LAB__STATE_DIR", str(path))
    with dask.config.set({"coiled-lab.state-dir": str(path)}):
        yield path


@pytest.fixture
def jp_server_config(state_dir: Path) -> Config:
    return Config({"ServerApp": {"jpserver_extensions": {"coiled_lab_server": True}}})


@pytest.fixture
def service(jp_serverapp, jp_fetch, jp_asyncio_loop, state_dir: Path):
    """The extension's shared state, with the HTTP server listening (``jp_fetch``).

    Teardown closes the extension before anything else, then kills whatever dask process
    a failed test left behind, so a reconcile pass can never bring one back."""
    apps = jp_serverapp.extension_manager.extension_apps["coiled_lab_server"]
    svc: Service = next(iter(apps)).service
    yield svc
    jp_asyncio_loop.run_until_complete(svc.close())
    for proc in cluster_processes(state_dir):
        proc.send_signal(signal.SIGKILL)


class Recorder:
    """``jp_fetch`` that never raises on 4xx/5xx, decodes JSON and keeps every body it saw."""

    def __init__(self, jp_fetch: Any):
        self._fetch = jp_fetch
        self.bodies: list[bytes] = []

    async def __call__(
        self, method: str, *parts: str, body: Any = None, params: Optional[dict] = None,
        headers: Optional[dict] = None, raw: Optional[bytes] = None,
    ) -> tuple[int, Any]:
        payload = raw if raw is not None else (json.dumps(body) if body is not None else None)
        if payload is None and method in ("POST", "PUT", "PATCH"):
            payload = b""
        response = await self._fetch(
            *parts, method=method, body=payload, params=params, headers=headers,
            raise_error=False, allow_nonstandard_methods=True,
        )
        self.bodies.append(response.body or b"")
        try:
            data = json.loads(response.body) if response.body else None
        except ValueError:
            data = None
        return response.code, data


@pytest.fixture
def api(jp_fetch) -> Recorder:
    return Recorder(jp_fetch)
