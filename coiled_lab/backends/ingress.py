"""How this server reaches a cluster's scheduler, and who else may.

Shared by the cloud backends: each opens :data:`SCHEDULER_PORT` and :data:`DASHBOARD_PORT`
to one CIDR per rule (an AWS security group, a GCE firewall rule), and connects to the
scheduler's public or private address.

- ``connect_via``: ``private`` when this server runs inside the cluster's network (the
  cloud's metadata service says which one: an EC2 instance's VPC, a GCE VM's network),
  ``public`` otherwise; ``auto`` decides that for each cluster.
- ``allow_ingress_from: me``: the address the cloud sees this server's connections come
  from. Over the public internet that is the egress address of its NAT, which only an
  address-echo service outside can tell (``coiled-lab.address-echo``, AWS's by default);
  inside the network, the server's own address on the route there. Nothing is open to the
  world unless an admin allows ``0.0.0.0/0`` and someone writes it.
"""

from __future__ import annotations

import asyncio
import ipaddress
import os
import socket
import threading
import time
import urllib.request
from typing import Callable, Optional
from urllib.parse import urlparse

from .. import config

SCHEDULER_PORT = 8786
DASHBOARD_PORT = 8787
CONNECT_VIA = ("auto", "public", "private")
ECHO_TIMEOUT = 3.0  # seconds the address-echo service has to answer
ECHO_TTL = 600.0  # seconds a learned public address is reused (a laptop may change networks)
METADATA_TIMEOUT = 1.0  # off the cloud nothing answers: this is what finding that out costs, once

_echoed: dict[str, tuple[float, str]] = {}  # echo URL -> (learned at, address)
_networks: dict[str, Optional[tuple[str, str]]] = {}  # cloud -> this server's (network, address) there
_lock = threading.Lock()
Error = Callable[[str], Exception]  # what a failure raises: the backend's error class, or a field's


def server_address(endpoint_url: str, error: Error = RuntimeError) -> str:
    """This machine's IPv4 address on the route to ``endpoint_url``.

    Connecting a UDP socket only asks the kernel for a route (no packet leaves), so this
    works without internet access; it is the source address the cloud sees from a server
    inside its network.
    """
    url = urlparse(endpoint_url)
    try:
        target = socket.getaddrinfo(url.hostname, url.port or 443, socket.AF_INET, socket.SOCK_DGRAM)[0][4]
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            sock.connect(target)
            return sock.getsockname()[0]
    except OSError as exc:
        raise error(
            f"allow_ingress_from: could not find this server's address on the route to {url.hostname} ({exc}); "
            "give allow_ingress_from as a CIDR instead of 'me'"
        ) from None


def public_address(error: Error = RuntimeError) -> str:
    """This server's address as the internet sees it, from the address-echo service
    (cached :data:`ECHO_TTL` seconds). Blocking; raises ``error`` naming the fix."""
    url = config.get("address-echo")
    with _lock:
        learned = _echoed.get(url)
        if learned and time.monotonic() - learned[0] < ECHO_TTL:
            return learned[1]
    try:
        with urllib.request.urlopen(url, timeout=ECHO_TIMEOUT) as response:
            text = response.read(64).decode("ascii", "replace").strip()
        address = str(ipaddress.IPv4Address(text))
    except (OSError, ValueError) as exc:
        reason = getattr(exc, "reason", None) or exc
        raise error(
            f"allow_ingress_from: 'me' needs this server's public address, and {url} did not tell it ({reason}); "
            "give allow_ingress_from as a CIDR that holds this server's address, or set coiled-lab.address-echo "
            "to a service that answers"
        ) from None
    with _lock:
        _echoed[url] = (time.monotonic(), address)
    return address


def server_network(cloud: str) -> Optional[tuple[str, str]]:
    """Where this server runs on ``cloud``, as that cloud's metadata service says: (its
    network: the VPC id on AWS, ``<project id>/<network name>`` on GCP; its private
    address), or None when it is not a VM there. Asked once per process: a server does
    not move."""
    with _lock:
        if cloud in _networks:
            return _networks[cloud]
    try:
        found = _ask_metadata(cloud)
    except (OSError, ValueError, PermissionError):
        found = None
    with _lock:
        _networks[cloud] = found
    return found


def _ask_metadata(cloud: str) -> Optional[tuple[str, str]]:
    # The switches botocore and google-auth read to know they are not on a VM of theirs.
    if os.environ.get({"aws": "AWS_EC2_METADATA_DISABLED", "gcp": "NO_GCE_CHECK"}[cloud], "").lower() == "true":
        return None
    if cloud == "aws":
        from ..bootstrap.vm import Metadata

        imds = Metadata(timeout=METADATA_TIMEOUT)
        mac = imds.get("mac")
        vpc = imds.get(f"network/interfaces/macs/{mac}/vpc-id") if mac else None
        address = imds.get("local-ipv4")
        return (vpc, address) if vpc and address else None
    from ..bootstrap import gce

    server = gce.Metadata(host=os.environ.get("GCE_METADATA_HOST") or "169.254.169.254", timeout=METADATA_TIMEOUT)
    project, network = server.get("project/project-id"), server.get("instance/network-interfaces/0/network")
    address = server.get("instance/network-interfaces/0/ip")
    return (f"{project}/{network.rsplit('/', 1)[-1]}", address) if project and network and address else None


def connect_via(asked: str, cloud: str, cluster_network: str) -> str:
    """``public`` or ``private``: what ``auto`` means for a cluster in ``cluster_network``."""
    if asked != "auto":
        return asked
    here = server_network(cloud)
    return "private" if here is not None and here[0] == cluster_network else "public"


def ingress_cidr(value: str, via: str, cloud: str, endpoint_url: str, error: Error = RuntimeError) -> str:
    """``allow_ingress_from`` as a CIDR; ``me`` is this server as the scheduler sees it
    when reached ``via`` its public or private address: the echo's answer, or the private
    address (the metadata's on a VM of ``cloud``, else the one on the route to the cloud,
    as from a peered network). Blocking (it may ask the echo or the metadata)."""
    if value != "me":
        return str(ipaddress.ip_network(value, strict=False))
    if via == "public":
        return f"{public_address(error)}/32"
    here = server_network(cloud)
    return f"{here[1] if here else server_address(endpoint_url, error)}/32"


async def reach(asked_via: str, allow_ingress_from: str, cloud: str, cluster_network: str, endpoint_url: str,
                error: Error = RuntimeError) -> tuple[str, str]:
    """(how this server connects, the CIDR the scheduler's ports open to) for one cluster."""
    def resolve() -> tuple[str, str]:
        via = connect_via(asked_via, cloud, cluster_network)
        return via, ingress_cidr(allow_ingress_from, via, cloud, endpoint_url, error)

    return await asyncio.to_thread(resolve)


def precheck(asked_via: str, allow_ingress_from: str, cloud: str, error: Error) -> Optional[str]:
    """Before a cluster is recorded: when ``me`` will need the public address for sure
    (this server is not a VM on ``cloud``, or asked for ``public``), learn it now, so that a
    launch it would doom is refused at once. Returns it (None when not needed yet)."""
    if allow_ingress_from != "me" or asked_via == "private":
        return None
    if asked_via == "auto" and server_network(cloud) is not None:
        return None  # on the cloud: decided per cluster, once its network is known
    return public_address(error)


def describe_me(cloud: str) -> dict:
    """What ``me`` is from here, for forms and ``setup``: this server's public address (or
    why it cannot be learned), and its network and private address when it is a VM on ``cloud``."""
    here = server_network(cloud)
    try:
        public, error = public_address(), None
    except RuntimeError as exc:
        public, error = None, str(exc)
    return {"public_address": public, "error": error, "echo": config.get("address-echo"),
            "network": here[0] if here else None, "private_address": here[1] if here else None}


def address_of(data: dict, via: Optional[str]) -> Optional[str]:
    """The address of a machine (``private_ip`` / ``public_ip`` in its data) to connect ``via``."""
    return data.get("public_ip") if via == "public" else data.get("private_ip")
