"""Who may reach a cluster's scheduler: the ports, and ``allow_ingress_from`` as a CIDR.

Shared by the cloud backends: each opens :data:`SCHEDULER_PORT` and :data:`DASHBOARD_PORT`
to one CIDR per rule (an AWS security group, a GCE firewall rule). The default, ``me``,
is this server's own address, so nothing is open to the world unless someone writes
``0.0.0.0/0``.
"""

from __future__ import annotations

import ipaddress
import socket
from urllib.parse import urlparse

SCHEDULER_PORT = 8786
DASHBOARD_PORT = 8787


def server_address(endpoint_url: str, error: type[Exception] = RuntimeError) -> str:
    """This machine's IPv4 address on the route to ``endpoint_url``.

    Connecting a UDP socket only asks the kernel for a route (no packet leaves), so this
    works without internet access; it is the source address the cloud would see from a
    server in its network.
    """
    url = urlparse(endpoint_url)
    try:
        target = socket.getaddrinfo(url.hostname, url.port or 443, socket.AF_INET, socket.SOCK_DGRAM)[0][4]
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            sock.connect(target)
            return sock.getsockname()[0]
    except OSError as exc:
        raise error(
            f"could not find this server's address on the route to {url.hostname} ({exc}); "
            "give allow_ingress_from as a CIDR instead of 'me'"
        ) from None


def resolve_cidr(value: str, endpoint_url: str, error: type[Exception] = RuntimeError) -> str:
    """``allow_ingress_from`` as a CIDR: ``me`` becomes this server's address /32."""
    if value == "me":
        return f"{server_address(endpoint_url, error)}/32"
    return str(ipaddress.ip_network(value, strict=False))
