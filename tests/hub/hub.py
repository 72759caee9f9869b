"""A real JupyterHub (this machine's, run as root) with the local process spawner, its
configurable-http-proxy, and ``coiled-lab serve`` under an account of its own.

The service is run by the test as JupyterHub runs a managed one (the same environment
variables, setuid to its account), rather than by the hub: so that the test can kill it
and start it again at once (the hub polls a managed service only every 30 s). Users'
servers get what the documented ``jupyterhub_config.py`` gives them: the service's URL
and a server token with the scope to reach it.
"""

from __future__ import annotations

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

import requests

from .env import UnixUser

SERVICE = "coiled-lab"
SERVICE_SCOPE = f"access:services!service={SERVICE}"
# The documented snippet's lines, as the test uses them (README: "Teams on one JupyterHub").
HUB_CONFIG = """
c.JupyterHub.ip = "127.0.0.1"
c.JupyterHub.port = {public_port}
c.JupyterHub.hub_ip = "127.0.0.1"
c.JupyterHub.hub_port = {hub_port}
c.JupyterHub.db_url = "sqlite:///{hub_dir}/jupyterhub.sqlite"
c.JupyterHub.cookie_secret_file = "{hub_dir}/cookie_secret"
c.ConfigurableHTTPProxy.command = {proxy_command!r}
c.ConfigurableHTTPProxy.api_url = "http://127.0.0.1:{proxy_api_port}"
c.ConfigurableHTTPProxy.pid_file = "{hub_dir}/proxy.pid"
c.JupyterHub.authenticator_class = "dummy"
c.Authenticator.allowed_users = {users!r}
c.Authenticator.admin_users = {{{admin!r}}}
c.JupyterHub.spawner_class = "localprocess"
c.Spawner.cmd = ["{venv}/bin/jupyterhub-singleuser"]
c.Spawner.start_timeout = 120
c.Spawner.http_timeout = 120
c.Spawner.poll_interval = 5

# -- coiled-lab: the service, and users' servers that forward to it --------------------
c.JupyterHub.services = [
    {{"name": "coiled-lab", "url": "http://127.0.0.1:{service_port}", "api_token": {service_token!r},
      "oauth_no_confirm": True}},
    {{"name": "test-admin", "api_token": {admin_token!r}}},
]
c.JupyterHub.load_roles = [
    # Every user may use the service (users have no access to services by default) ...
    {{"name": "user", "scopes": ["self", "access:services!service=coiled-lab"]}},
    {{"name": "test-admin", "scopes": ["admin:users", "admin:servers", "tokens", "access:servers"],
      "services": ["test-admin"]}},
]
# ... and each user's server, with its own token, on that user's behalf.
c.Spawner.server_token_scopes = ["users:activity!user", "access:servers!server",
                                 "access:services!service=coiled-lab"]
c.Spawner.environment = {{
    "COILED_LAB_SERVICE_URL": "http://127.0.0.1:{service_port}/services/coiled-lab/",
    "PYTHONPATH": "{src}",
}}
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until(predicate: Any, timeout: float, what: str, interval: float = 0.25) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            value = predicate()
        except (requests.ConnectionError, OSError):
            value = None
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


class Hub:
    def __init__(self, where: Path, venv: Path, src: Path, proxy: list[str], users: list[UnixUser],
                 admin: str, service_user: UnixUser, db: Optional[str], service_config: dict[str, Any],
                 secret: str):
        self.where, self.venv, self.src, self.users, self.admin = where, venv, src, users, admin
        self.service_user, self.db, self.secret = service_user, db, secret
        self.hub_dir = where / "hub"
        self.hub_dir.mkdir(mode=0o700)  # its config names the service's token: root's only
        self.public_port, self.service_port = free_port(), free_port()
        self.service_token, self.admin_token = secrets.token_hex(32), secrets.token_hex(32)
        config = HUB_CONFIG.format(
            public_port=self.public_port, hub_port=free_port(), proxy_api_port=free_port(), hub_dir=self.hub_dir,
            proxy_command=proxy, users={u.name for u in users}, admin=admin, venv=venv, src=src,
            service_port=self.service_port, service_token=self.service_token, admin_token=self.admin_token,
        )
        self.hub_port = int(config.split("c.JupyterHub.hub_port = ")[1].split()[0])
        (self.hub_dir / "jupyterhub_config.py").write_text(config)
        # The service's own files: its config (limits) and state, its account's only.
        self.service_state = service_user.home / "state"
        self.service_config = service_user.home / "coiled-lab.yaml"
        self.service_config.write_text(json.dumps({"coiled-lab": service_config}))
        os.chown(self.service_config, service_user.uid, service_user.uid)
        self.service_config.chmod(0o600)
        self.service_log = open(where / "service.log", "ab")
        self.hub_proc: Optional[subprocess.Popen] = None
        self.service_proc: Optional[subprocess.Popen] = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.public_port}"

    # -- processes ------------------------------------------------------------------------
    def start(self) -> None:
        self.hub_proc = subprocess.Popen(
            [sys.executable, "-m", "jupyterhub", "-f", str(self.hub_dir / "jupyterhub_config.py")],
            cwd=self.hub_dir, stdout=open(self.where / "hub.log", "ab"), stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self.start_service()
        wait_until(lambda: requests.get(f"{self.url}/hub/api/", timeout=5).ok, 90, "the hub")

    def service_env(self) -> dict[str, str]:
        """What JupyterHub gives a managed service, plus the service's own secret."""
        prefix = f"/services/{SERVICE}/"
        return {
            "PATH": f"{self.venv}/bin:/usr/bin:/bin", "HOME": str(self.service_user.home),
            "USER": self.service_user.name, "LANG": "C.UTF-8", "PYTHONPATH": str(self.src),
            "JUPYTERHUB_SERVICE_NAME": SERVICE, "JUPYTERHUB_API_TOKEN": self.service_token,
            "JUPYTERHUB_API_URL": f"http://127.0.0.1:{self.hub_port}/hub/api",
            "JUPYTERHUB_BASE_URL": "/", "JUPYTERHUB_SERVICE_URL": f"http://127.0.0.1:{self.service_port}",
            "JUPYTERHUB_SERVICE_PREFIX": prefix, "JUPYTERHUB_CLIENT_ID": f"service-{SERVICE}",
            "JUPYTERHUB_OAUTH_CALLBACK_URL": f"{prefix}oauth_callback", "JUPYTERHUB_HOST": "",
            "DASK_COILED_LAB__STATE_DIR": str(self.service_state),
            "DASK_COILED_LAB__MANAGER__CHECK_INTERVAL": "0.5",
            # The secret the service holds and no user may read.
            "AWS_ACCESS_KEY_ID": "AKIAIOSFODNN7EXAMPLE", "AWS_SECRET_ACCESS_KEY": self.secret,
            "AWS_EC2_METADATA_DISABLED": "true",
        }

    def start_service(self) -> None:
        cmd = [f"{self.venv}/bin/python", "-c", "import sys; from coiled_lab.cli import main; sys.exit(main())",
               "serve", "--config", str(self.service_config), *(["--db", self.db] if self.db else [])]
        self.service_proc = subprocess.Popen(
            cmd, env=self.service_env(), cwd=self.service_user.home, user=self.service_user.uid,
            group=self.service_user.uid, extra_groups=[], stdout=self.service_log, stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        wait_until(lambda: requests.get(f"http://127.0.0.1:{self.service_port}/services/{SERVICE}/health",
                                        timeout=5).status_code == 200, 90, "coiled-lab serve")

    def kill_service(self) -> None:
        """SIGKILL, as a crash: no clean shutdown."""
        assert self.service_proc is not None
        self.service_proc.send_signal(signal.SIGKILL)
        self.service_proc.wait(10)

    def stop(self) -> None:
        for proc in (self.service_proc, self.hub_proc):
            if proc is not None and proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(20)
                except subprocess.TimeoutExpired:
                    proc.kill()
        proxy_pid = self.hub_dir / "proxy.pid"
        if proxy_pid.exists():  # the hub leaves its proxy running on purpose
            try:
                os.kill(int(proxy_pid.read_text()), signal.SIGTERM)
            except (ProcessLookupError, ValueError):
                pass
        self.service_log.close()

    # -- the hub's REST API ---------------------------------------------------------------
    def hub_api(self, method: str, path: str, **kwargs: Any) -> requests.Response:
        return requests.request(method, f"{self.url}/hub/api/{path}", timeout=30,
                                headers={"Authorization": f"token {self.admin_token}"}, **kwargs)

    def token(self, user: str, expires_in: Optional[int] = None) -> str:
        body: dict[str, Any] = {"note": "coiled-lab hub test"}
        if expires_in is not None:
            body["expires_in"] = expires_in
        reply = self.hub_api("POST", f"users/{user}/tokens", json=body)
        assert reply.status_code in (200, 201), reply.text
        return reply.json()["token"]

    def start_server(self, user: str) -> None:
        reply = self.hub_api("POST", f"users/{user}/server")
        assert reply.status_code in (201, 202), reply.text

    def wait_server(self, user: str) -> None:
        def ready() -> Any:
            model = self.hub_api("GET", f"users/{user}").json()
            return model.get("server") and not model.get("pending")

        wait_until(ready, 150, f"{user}'s server", interval=0.5)


class Client:
    """Requests with one hub token, to a user's server or to the service."""

    def __init__(self, base: str, token: str):
        self.base, self.token = base.rstrip("/"), token

    def __call__(self, method: str, path: str, body: Any = None, **kwargs: Any) -> tuple[int, Any]:
        reply = requests.request(method, f"{self.base}/{path.lstrip('/')}", json=body, timeout=60,
                                 allow_redirects=False, headers={"Authorization": f"token {self.token}"}, **kwargs)
        try:
            data = reply.json()
        except ValueError:
            data = reply.text
        return reply.status_code, data
