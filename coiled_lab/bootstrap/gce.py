"""On a GCE VM: the metadata server, which says who this machine is and hands out its
service account's access tokens.

Runs on the VM (see :mod:`coiled_lab.bootstrap.vm`), with the standard library only. Every
request carries ``Metadata-Flavor: Google`` (the server refuses requests without it, so a
page fetched through a proxy cannot read it), and is sent directly, never through the proxy
``http_proxy`` may name. ``GCE_METADATA_HOST`` (``host:port``) points elsewhere, as
google-auth's own client allows; the tests' GCE emulator uses it.
"""

from __future__ import annotations

import json
import os
import threading
import time
import urllib.error
import urllib.request
from typing import Any, Callable, Optional

DEFAULT_HOST = "metadata.google.internal"
LOGGING_ENDPOINT_ENV = "COILED_LAB_GCP_LOGGING_ENDPOINT"
# Where the VM reaches Compute Engine to delete itself, when its image says (the startup
# script reads it: coiled_lab.backends.gcp.startup).
COMPUTE_ENDPOINT_ENV = "COILED_LAB_GCP_COMPUTE_ENDPOINT"
_DIRECT = urllib.request.build_opener(urllib.request.ProxyHandler({}))


class Metadata:
    def __init__(self, host: Optional[str] = None, timeout: float = 2.0):
        self.base = f"http://{host or os.environ.get('GCE_METADATA_HOST') or DEFAULT_HOST}/computeMetadata/v1"
        self.timeout = timeout
        self._token: Optional[tuple[float, str]] = None  # (expires at, token)
        self._lock = threading.Lock()

    def get(self, path: str) -> Optional[str]:
        """The value at ``path`` (``instance/name``), or None where there is none (404)."""
        request = urllib.request.Request(f"{self.base}/{path}", headers={"Metadata-Flavor": "Google"})
        try:
            with _DIRECT.open(request, timeout=self.timeout) as response:
                return response.read().decode()
        except urllib.error.HTTPError as exc:
            if exc.code == 404:
                return None
            raise

    def identity(self) -> dict[str, Any]:
        """The fields of :class:`coiled_lab.bootstrap.vm.Identity`. The instance *name* is
        the id: it is what the Compute API addresses a machine by, and unique per cluster."""
        zone = (self.get("instance/zone") or "").rsplit("/", 1)[-1]
        return {
            "instance_id": self.get("instance/name") or "",
            "private_ip": self.get("instance/network-interfaces/0/ip") or "",
            "region": zone.rsplit("-", 1)[0],
            "zone": zone,
            "instance_type": (self.get("instance/machine-type") or "").rsplit("/", 1)[-1],
            "spot": (self.get("instance/scheduling/provisioning-model") or "").upper() == "SPOT",
        }

    def project(self) -> str:
        return self.get("project/project-id") or ""

    def token(self) -> str:
        """An access token of the VM's service account, fetched again a minute before it expires."""
        with self._lock:
            if self._token is None or time.time() > self._token[0] - 60:
                answer = json.loads(self.get("instance/service-accounts/default/token") or "{}")
                self._token = (time.time() + float(answer.get("expires_in", 0)), answer["access_token"])
            return self._token[1]

    def preempted(self) -> Optional[str]:
        """A notice when GCE is taking this Spot VM back (it gives 30 seconds), else None."""
        return "preempted" if (self.get("instance/preempted") or "").upper() == "TRUE" else None


def on_gce(config: dict[str, Any]) -> tuple[Any, Any, Callable[[], Optional[str]], Callable[[dict], Any]]:
    """Who this GCE VM is (a :class:`~coiled_lab.bootstrap.vm.Identity`), its Cloud Logging
    shipper, its preemption notice, and its environment bucket (with the service account's token)."""
    from . import cloudlogging, envcache
    from .vm import Identity

    metadata = Metadata()
    me = Identity(**metadata.identity())
    project = config.get("project") or metadata.project()
    # The image may name the endpoint its network reaches Cloud Logging at (a Private
    # Service Connect name; the tests' emulator): it wins over the server's setting.
    endpoint = os.environ.get(LOGGING_ENDPOINT_ENV) or config.get("logging_endpoint") or cloudlogging.DEFAULT_ENDPOINT
    shipper = cloudlogging.CloudLoggingShipper(
        metadata.token, endpoint,
        f"projects/{project}/logs/{config['log_name']}",
        {"type": "gce_instance", "labels": {"project_id": project, "zone": me.zone,
                                            "instance_id": metadata.get("instance/id") or me.instance_id}},
        {cloudlogging.CLUSTER_LABEL: config["cluster_id"], cloudlogging.ROLE_LABEL: config["role"],
         cloudlogging.INSTANCE_LABEL: me.instance_id},
    )
    return me, shipper, metadata.preempted, lambda store: envcache.open_bucket(store, metadata.token)
