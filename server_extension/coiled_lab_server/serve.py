"""``coiled-lab serve``: the control plane as a JupyterHub service, under its own account.

It is a Jupyter server that loads coiled-lab's extension and nothing else, so every route
of the single-user API is served by the same handlers, with three differences:

- who asks is a JupyterHub user (:mod:`.hub`): each request acts for that user as a
  :class:`~coiled_lab.control.callers.Caller` (owner, limits, audit); an authorizer refuses
  every resource but coiled-lab's, and the routes that would reach the service account's
  files, kernels or terminals are not even served (``default_services`` is empty, no
  ``/files`` route, terminals are off, no other server extension is loaded, no Jupyter
  config file is read);
- the cloud credentials are the service account's own (its environment, taken out of it
  at start as in a user's server; ``credentials.json`` in its state dir, mode 0600; or
  the machine's role), and no kernel token is published;
- ``/health``, ``/metrics`` and JSON logs (:mod:`.ops`).

Its settings come from the environment JupyterHub gives a managed service
(``JUPYTERHUB_SERVICE_URL``, ``JUPYTERHUB_SERVICE_PREFIX``, ``JUPYTERHUB_API_TOKEN``,
``JUPYTERHUB_API_URL``...) or from flags for an external one, and coiled-lab's own from
dask config (``--config FILE`` adds a YAML file: limits, ``admin-group``, ``state-dir``).
A database that cannot be reached at start is tried again with growing waits for
``coiled-lab.store.connect-timeout`` (the store's own retries, one warning each), then
the command exits with one line and status 3: the hub restarts a managed service, but
not in a tight loop.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path
from typing import Any, Optional, Sequence
from urllib.parse import urlsplit

import yaml
from jupyter_server.serverapp import ServerApp
from jupyter_server.services.contents.filemanager import FileContentsManager
from jupyter_server.utils import url_path_join
from traitlets.config import Config

from .ops import JSONFormatter

EXIT_STORE = 3  # the CLI's "not now" (coiled_lab.errors): a store that cannot be used


class CoiledLabServe(ServerApp):
    """A Jupyter server with coiled-lab's routes only."""

    name = "coiled-lab-serve"
    description = "coiled-lab's control plane as a JupyterHub service"
    default_services = ()  # no contents, files, kernels, sessions, config or nbconvert routes
    _log_formatter_cls = JSONFormatter  # type: ignore[assignment]

    def load_config_file(self, *args: Any, **kwargs: Any) -> None:
        """Jupyter's config files belong to whoever runs notebooks; the service's own
        settings are its flags and dask config."""

    def find_server_extensions(self) -> None:
        """coiled-lab's extension only (``jpserver_extensions`` from the command's config)."""


class NoFiles(FileContentsManager):
    """The contents manager a Jupyter server must have, without its ``/files`` route."""

    def get_extra_handlers(self) -> list:
        return []


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="coiled-lab serve",
        description="Run coiled-lab's control plane as a JupyterHub service (its settings come from the "
                    "environment JupyterHub gives a managed service; flags override them).",
    )
    parser.add_argument("--db", help="the store: a postgresql:// URL, or a path or sqlite:/// URL "
                                     "(default: SQLite in the state dir)")
    parser.add_argument("--config", type=Path, help="a dask config YAML file for coiled-lab "
                                                    "(limits, admin-group, state-dir...)")
    parser.add_argument("--ip", help="address to listen on (default: from JUPYTERHUB_SERVICE_URL, else 127.0.0.1)")
    parser.add_argument("--port", type=int, help="port to listen on (default: from JUPYTERHUB_SERVICE_URL, else 10101)")
    parser.add_argument("--base-url", help="URL prefix (default: $JUPYTERHUB_SERVICE_PREFIX, else /services/coiled-lab/)")
    parser.add_argument("--allow-root", action="store_true", help="run as root (tests; a service runs under "
                                                                   "its own account)")
    parser.add_argument("--debug", action="store_true", help="log at debug level")
    return parser.parse_args(list(argv))


def server_config(ns: argparse.Namespace, state_dir: Path) -> Config:
    """The Jupyter server's settings for the service."""
    from . import ops
    from .hub import HubIdentityProvider, ServiceAuthorizer

    url = urlsplit(os.environ.get("JUPYTERHUB_SERVICE_URL") or "http://127.0.0.1:10101")
    name = os.environ.get("JUPYTERHUB_SERVICE_NAME") or "coiled-lab"
    base_url = ns.base_url or os.environ.get("JUPYTERHUB_SERVICE_PREFIX") or f"/services/{name}/"
    return Config({
        "ServerApp": {
            "jpserver_extensions": {"coiled_lab_server": True},
            "identity_provider_class": HubIdentityProvider,
            "authorizer_class": ServiceAuthorizer,
            "ip": ns.ip or url.hostname or "127.0.0.1",
            "port": ns.port or url.port or 10101,
            "port_retries": 0,
            "base_url": base_url,
            "allow_remote_access": True,  # requests come through the hub's proxy, Host and all
            "trust_xheaders": True,
            "open_browser": False,
            "allow_root": ns.allow_root,
            "terminals_enabled": False,
            "root_dir": str(state_dir),
            "contents_manager_class": NoFiles,
            "default_url": url_path_join(base_url, "health"),  # `/`: the health check, not a Jupyter page
            # Stable across restarts: an open dashboard (its key derives from it) survives one.
            "cookie_secret_file": str(state_dir / "cookie_secret"),
            "log_level": "DEBUG" if ns.debug else "INFO",
            "tornado_settings": {"log_function": ops.log_request},
        },
        "CoiledLabServer": {"team": True, "db": ns.db or ""},
        # Only users whose token or cookie may reach this service (JupyterHub says so for a
        # managed one; an external one run by flags alone gets the same).
        **({} if os.environ.get("JUPYTERHUB_OAUTH_ACCESS_SCOPES") else
           {"HubOAuth": {"access_scopes": [f"access:services!service={name}"]}}),
    })


def use_json_logs(debug: bool) -> None:
    """Every logger (tornado's, coiled-lab's; the server's has its own, of the same
    formatter) writes JSON lines to stderr."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JSONFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.DEBUG if debug else logging.INFO)
    for name in ("coiled_lab", "tornado"):
        logging.getLogger(name).setLevel(logging.DEBUG if debug else logging.INFO)
    logging.getLogger("alembic").setLevel(logging.WARNING)


def check_store(state_dir: Path, db: Optional[str]) -> Optional[str]:
    """Open the store (a database is tried again for ``store.connect-timeout``) and close
    it again: None once it opens, else why not, in one line naming the fix."""
    from coiled_lab.control.manager import ClusterManager
    from coiled_lab.errors import StoreUnavailable

    try:
        manager = ClusterManager(state_dir, **({"db": db} if db else {}))
        manager.store.open()
        manager.store.close()
    except StoreUnavailable as exc:  # it names the store and the fix
        return str(exc).splitlines()[0]
    except Exception as exc:  # noqa: BLE001 - any other failure to open is told too, in one line
        return f"{type(exc).__name__}: {exc}".splitlines()[0]
    return None


def main(argv: Sequence[str]) -> int:
    import dask.config

    from coiled_lab import config

    ns = parse_args(argv)
    use_json_logs(ns.debug)
    log = logging.getLogger("coiled_lab.serve")
    if ns.config is not None:
        try:
            extra = yaml.safe_load(ns.config.read_text()) or {}
        except (OSError, yaml.YAMLError) as exc:
            print(f"error: --config {ns.config}: {exc}; give a readable dask config YAML file", file=sys.stderr)
            return 2
        dask.config.update(dask.config.config, extra, priority="new")
    state_dir = config.state_dir()
    state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    why = check_store(state_dir, ns.db)
    if why is not None:
        print(f"error: coiled-lab serve cannot start: {why}", file=sys.stderr)
        return EXIT_STORE
    app = CoiledLabServe(config=server_config(ns, state_dir))
    app.initialize(argv=[])
    # The server set up handlers of its own (for itself and tornado) and emptied the root's.
    use_json_logs(ns.debug)
    for logger in [logging.getLogger(name) for name in list(logging.root.manager.loggerDict)]:
        for handler in logger.handlers:
            handler.setFormatter(JSONFormatter())
    log.info("serving", extra={"url": app.connection_url, "state_dir": str(state_dir), "db": _redacted(ns.db)})
    app.start()
    return 0


def _redacted(url: Optional[str]) -> Optional[str]:
    """A database URL without its password, for logs and errors."""
    if not url:
        return url
    parts = urlsplit(url)
    if parts.password:
        netloc = parts.netloc.replace(f":{parts.password}@", ":***@")
        return parts._replace(netloc=netloc).geturl()
    return url
