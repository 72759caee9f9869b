"""A real ``jupyter lab`` in a subprocess, for the browser tests and the lab extension's
benchmark: its own port, token, state dir, runtime dir (so the cookie secret, and with it
the browser's login, survives a restart), user settings and workspaces; local backend."""

from __future__ import annotations

import http.client
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Optional

import psutil

from ..conftest import cluster_processes

CHROMIUM = Path("/usr/bin/chromium")

# Lab settings every test page starts with: no news or update prompts over the page.
QUIET = {"@jupyterlab/apputils-extension:notification": {"fetchNews": "false", "checkForUpdates": False}}


def ensure_chromium() -> Path:
    """Debian's Chromium (Playwright's own browser download is not reachable): installed
    with apt-get when missing, as on a clean CI machine."""
    if not CHROMIUM.exists():
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        subprocess.run(["apt-get", "update"], check=True, env=env, capture_output=True)
        subprocess.run(["apt-get", "install", "-y", "chromium"], check=True, env=env, capture_output=True)
    return CHROMIUM


def installed_labextension() -> Optional[Path]:
    """The coiled-lab lab extension JupyterLab will load, if it is installed."""
    from jupyter_core.paths import jupyter_path

    for base in jupyter_path("labextensions"):
        path = Path(base) / "coiled-lab"
        if (path / "package.json").exists():
            return path
    return None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class JupyterLab:
    """``jupyter lab`` on 127.0.0.1 with a token; :meth:`kill` and :meth:`start` again keep
    the port, state dir and runtime dir, as a restarted server would."""

    def __init__(self, root: Path, settings: Optional[dict[str, dict[str, Any]]] = None):
        self.root = Path(root)
        self.port = free_port()
        self.token = secrets.token_hex(16)
        self.state_dir = self.root / "state"
        self.log_path = self.root / "lab.log"
        for name in ("state", "runtime", "config", "settings", "workspaces", "notebooks"):
            (self.root / name).mkdir(parents=True, exist_ok=True, mode=0o700)
        for plugin, values in {**QUIET, **(settings or {})}.items():
            package, _, name = plugin.partition(":")
            path = self.root / "settings" / package / f"{name}.jupyterlab-settings"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps(values))
        self.proc: Optional[subprocess.Popen] = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/"

    @property
    def lab_url(self) -> str:
        """The lab, with no saved workspace, logging the browser in with the token."""
        return f"{self.url}lab?reset&token={self.token}"

    def start(self, timeout: float = 120, ready: str = "coiled-lab/api/clusters?live=true") -> None:
        """Start it and wait until ``ready`` answers 200."""
        env = {
            **os.environ,
            "DASK_COILED_LAB__STATE_DIR": str(self.state_dir),
            "DASK_COILED_LAB__MANAGER__CHECK_INTERVAL": "0.5",
            "JUPYTER_RUNTIME_DIR": str(self.root / "runtime"),
            "JUPYTER_CONFIG_DIR": str(self.root / "config"),
        }
        cmd = [
            sys.executable, "-m", "jupyterlab", "--no-browser", "--allow-root", "--ServerApp.ip=127.0.0.1",
            f"--ServerApp.port={self.port}", "--ServerApp.port_retries=0", f"--IdentityProvider.token={self.token}",
            "--LabApp.news_url=None", f"--ServerApp.root_dir={self.root / 'notebooks'}",
            f"--LabServerApp.user_settings_dir={self.root / 'settings'}",
            f"--LabServerApp.workspaces_dir={self.root / 'workspaces'}",
        ]
        log = open(self.log_path, "a")
        self.proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"jupyter lab exited with {self.proc.returncode}; see {self.log_path}")
            try:
                if self.api("GET", ready)[0] == 200:
                    return
            except OSError:
                pass
            time.sleep(0.25)
        raise RuntimeError(f"jupyter lab did not answer within {timeout}s; see {self.log_path}")

    def kill(self) -> None:
        """Kill the server at once (SIGKILL): its clusters keep running, as after a crash."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(30)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.kill()

    def close(self) -> None:
        """Stop the server, then every dask process it left (and its kernels)."""
        self.stop()
        for proc in self.cluster_processes():
            try:
                proc.send_signal(signal.SIGKILL)
            except psutil.Error:
                pass

    def api(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        """A request with the Jupyter token; (status, decoded JSON body)."""
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        try:
            payload = json.dumps(body) if body is not None else None
            conn.request(method, "/" + path, body=payload, headers={"Authorization": f"token {self.token}"})
            response = conn.getresponse()
            raw = response.read()
        finally:
            conn.close()
        return response.status, (json.loads(raw) if raw else None)

    def cluster_processes(self) -> list[psutil.Process]:
        """Live dask processes of this server's clusters (found by the state dir in their command line)."""
        return cluster_processes(self.state_dir)
