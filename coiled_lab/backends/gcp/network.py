"""The network a cluster launches into: what ``coiled-lab setup gcp`` prepared, found by name.

A VPC network (``coiled-lab.gcp.network``) with one subnetwork of the same name per region,
a firewall rule letting VMs tagged ``coiled-lab`` reach each other on every port, and
"ingress" rules opening the scheduler (8786) and dashboard (8787) ports to one CIDR each,
targeting the schedulers tagged for that CIDR. A cluster asking for a CIDR no rule opens
yet gets a new rule (shared by later clusters asking for the same CIDR).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ... import config
from ..ingress import DASHBOARD_PORT, SCHEDULER_PORT
from .labels import NETWORK_TAG, ingress_tag, ssh_tag
from .session import GCPError, GCPSession, is_conflict, is_not_found

INTERNAL_RULE = "coiled-lab-internal"


@dataclass
class Network:
    network: str  # self link
    subnetwork: str  # self link, in the cluster's region
    cidr: str

    def to_state(self) -> dict[str, Any]:
        return {"network": self.network, "subnetwork": self.subnetwork, "subnet_cidr": self.cidr}


def ingress_rule_name(cidr: str) -> str:
    return ingress_tag(cidr)  # one rule per CIDR, named like the tag it targets


def internal_rule(network: str) -> dict[str, Any]:
    return {"name": INTERNAL_RULE, "network": network, "direction": "INGRESS", "priority": 1000,
            "description": "coiled-lab: members of a cluster reach each other",
            "source_tags": [NETWORK_TAG], "target_tags": [NETWORK_TAG], "allowed": [{"I_p_protocol": "all"}]}


def ingress_rule(network: str, cidr: str) -> dict[str, Any]:
    return {"name": ingress_rule_name(cidr), "network": network, "direction": "INGRESS", "priority": 1000,
            "description": f"coiled-lab: Dask scheduler and dashboard ports from {cidr}",
            "source_ranges": [cidr], "target_tags": [ingress_tag(cidr)],
            "allowed": [{"I_p_protocol": "tcp", "ports": [f"{SCHEDULER_PORT}-{DASHBOARD_PORT}"]}]}


async def find(gcp: GCPSession, region: str) -> Network:
    """The prepared subnetwork of ``region`` (one call), or GCPError saying to run setup."""
    name = config.get("gcp.network")
    try:
        subnet = await gcp.call(gcp.compute("Subnetworks").get, project=gcp.project, region=region, subnetwork=name)
    except Exception as exc:
        if is_not_found(exc):
            raise GCPError(f"coiled-lab has no network in {region}: run `coiled-lab setup gcp --region {region}` "
                           "once") from None
        raise
    return Network(network=subnet.network, subnetwork=subnet.self_link, cidr=subnet.ip_cidr_range)


async def wait_global(gcp: GCPSession, operation: Any) -> None:
    """Wait for a global operation (firewalls, networks); GCPError if it failed."""
    from .instances import operation_error

    if operation.status != operation.Status.DONE:
        operation = await gcp.call(gcp.compute("GlobalOperations").wait, project=gcp.project,
                                   operation=operation.name)
    error = operation_error(operation)
    if error:
        raise GCPError(f"{operation.operation_type} {operation.target_link.rsplit('/', 1)[-1]}: {error[1]}")


async def ensure_ingress(gcp: GCPSession, network: Network, cidr: str) -> str:
    """The network tag of the rule opening the scheduler to ``cidr``, made if missing."""
    await _ensure_firewall(gcp, ingress_rule_name(cidr), ingress_rule(network.network, cidr))
    return ingress_tag(cidr)


async def _ensure_firewall(gcp: GCPSession, name: str, rule: dict[str, Any]) -> None:
    """The firewall rule ``name``, made from ``rule`` if missing (one another cluster made a
    moment ago is taken as it is)."""
    firewalls = gcp.compute("Firewalls")
    try:
        await gcp.call(firewalls.get, project=gcp.project, firewall=name)
    except Exception as exc:
        if not is_not_found(exc):
            raise
        try:
            await wait_global(gcp, await gcp.call(firewalls.insert_unary, project=gcp.project, firewall_resource=rule))
        except Exception as exc2:
            if not is_conflict(exc2):
                raise


def ssh_rule(network: str, cidr: str) -> dict[str, Any]:
    return {"name": ssh_tag(cidr), "network": network, "direction": "INGRESS", "priority": 1000,
            "description": f"coiled-lab: SSH from {cidr}", "source_ranges": [cidr], "target_tags": [ssh_tag(cidr)],
            "allowed": [{"I_p_protocol": "tcp", "ports": ["22"]}]}


async def ensure_ssh(gcp: GCPSession, network: Network, cidr: str) -> str:
    """The network tag of the rule opening port 22 to ``cidr`` (``allow_ssh_from``), made if missing."""
    await _ensure_firewall(gcp, ssh_tag(cidr), ssh_rule(network.network, cidr))
    return ssh_tag(cidr)
