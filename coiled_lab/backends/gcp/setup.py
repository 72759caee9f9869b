"""``coiled-lab setup gcp``: prepare a project and region once, idempotently.

It reads what exists first and turns the difference into a :class:`~coiled_lab.backends.plan.Plan`;
``--dry-run`` prints it, otherwise its changes are applied in order. A second run finds
everything in place and says so. It makes:

- a VPC network ``coiled-lab.gcp.network`` (custom subnet mode) and, in the region, a
  subnetwork of the same name (``coiled-lab.gcp.subnet-cidr``) with Private Google Access;
- a firewall rule letting VMs tagged ``coiled-lab`` reach each other on every port, and one
  opening the scheduler and dashboard ports (8786-8787) to ``allow_ingress_from`` only
  (default: this machine's address; never 0.0.0.0/0 unless asked);
- the VMs' service account ``coiled-lab.gcp.service-account``, with one role on the project:
  ``roles/logging.logWriter`` (write log entries, nothing else).
"""

from __future__ import annotations

from typing import Any, Callable, Optional

from ... import config
from .. import ingress
from ..plan import Plan
from . import network
from .instances import service_account
from .session import GCPError, GCPSession, is_not_found

VM_ROLE = "roles/logging.logWriter"
SETUP_ROLES = {
    "roles/compute.networkAdmin": "create the network and subnetwork",
    "roles/compute.securityAdmin": "create the firewall rules",
    "roles/iam.serviceAccountAdmin": "create the VMs' service account",
    "roles/resourcemanager.projectIamAdmin": f"grant that service account {VM_ROLE}",
}
EVERYDAY_ROLES = {
    "roles/compute.instanceAdmin.v1": "launch, list and delete VMs, read their serial output",
    "roles/iam.serviceAccountUser": "run VMs as the coiled-lab service account (grant it on that account only)",
    "roles/logging.viewer": "read the clusters' logs",
    "roles/compute.securityAdmin": "open the scheduler to a CIDR no firewall rule opens yet "
                                   "(not needed if every cluster uses the CIDRs setup opened)",
}


async def _get(call: Callable[..., Any], **params: Any) -> Optional[Any]:
    try:
        return await call(**params)
    except Exception as exc:
        if is_not_found(exc):
            return None
        raise


async def plan(gcp: GCPSession, region: str, subnet_cidr: Optional[str] = None,
               allow_ingress_from: Optional[str] = None) -> Plan:
    """Read what exists (changing nothing) and list what setup would change."""
    p = Plan(region)
    project, name = gcp.project, config.get("gcp.network")
    compute = gcp.compute
    net_link = f"projects/{project}/global/networks/{name}"

    found = await _get(lambda **kw: gcp.call(compute("Networks").get, **kw), project=project, network=name)
    if found is None:
        async def create_network() -> None:
            await network.wait_global(gcp, await gcp.call(compute("Networks").insert_unary, project=project,
                                                          network_resource={
                                                              "name": name, "auto_create_subnetworks": False,
                                                              "description": "coiled-lab: made by `coiled-lab setup gcp`"}))

        p.add(f"create VPC network {name}", create_network)

    subnet = await _get(lambda **kw: gcp.call(compute("Subnetworks").get, **kw), project=project, region=region,
                        subnetwork=name)
    cidr = subnet_cidr or config.get("gcp.subnet-cidr")
    if subnet is None:
        async def create_subnet() -> None:
            operation = await gcp.call(compute("Subnetworks").insert_unary, project=project, region=region,
                                       subnetwork_resource={"name": name, "network": net_link, "ip_cidr_range": cidr,
                                                            "private_ip_google_access": True})
            if operation.status != operation.Status.DONE:
                await gcp.call(compute("RegionOperations").wait, project=project, region=region,
                               operation=operation.name)

        p.add(f"create subnetwork {name} {cidr} in {region}", create_subnet)
    elif subnet_cidr and subnet.ip_cidr_range != subnet_cidr:
        raise GCPError(f"--subnet-cidr: subnetwork {name} in {region} exists with {subnet.ip_cidr_range}, "
                       f"not {subnet_cidr}; leave the option out to keep it")

    wanted = [network.internal_rule(net_link)]
    source = allow_ingress_from or config.get("cluster.allow-ingress-from")
    open_to = ingress.resolve_cidr(source, gcp.endpoint("compute"), GCPError)
    wanted.append(network.ingress_rule(net_link, open_to))
    for rule in wanted:
        if await _get(lambda **kw: gcp.call(compute("Firewalls").get, **kw), project=project,
                      firewall=rule["name"]) is None:
            async def create_rule(rule: dict[str, Any] = rule) -> None:
                await network.wait_global(gcp, await gcp.call(compute("Firewalls").insert_unary, project=project,
                                                              firewall_resource=rule))

            what = ("VMs of a cluster reach each other" if rule["name"] == network.INTERNAL_RULE
                    else f"scheduler and dashboard ports {ingress.SCHEDULER_PORT}-{ingress.DASHBOARD_PORT} "
                         f"open to {open_to} only")
            p.add(f"create firewall rule {rule['name']}: {what}", create_rule)

    email = service_account(project)
    account = await _get(lambda **kw: gcp.rest("GET", "iam", f"/v1/projects/{project}/serviceAccounts/{email}"))
    if account is None:
        async def create_account() -> None:
            await gcp.rest("POST", "iam", f"/v1/projects/{project}/serviceAccounts", {
                "accountId": config.get("gcp.service-account"),
                "serviceAccount": {"displayName": "coiled-lab VMs", "description": "writes the VMs' logs, nothing else"},
            })

        p.add(f"create service account {email}", create_account)
    policy_path = f"/v1/projects/{project}"
    policy = await gcp.rest("POST", "resourcemanager", f"{policy_path}:getIamPolicy", {})
    member = f"serviceAccount:{email}"
    if not any(b.get("role") == VM_ROLE and member in b.get("members", []) and not b.get("condition")
               for b in policy.get("bindings", [])):
        async def grant() -> None:
            # Read again just before writing: the etag makes a concurrent change fail, not vanish.
            current = await gcp.rest("POST", "resourcemanager", f"{policy_path}:getIamPolicy", {})
            bindings = current.setdefault("bindings", [])
            binding = next((b for b in bindings if b.get("role") == VM_ROLE and not b.get("condition")), None)
            if binding is None:
                bindings.append({"role": VM_ROLE, "members": [member]})
            elif member not in binding.setdefault("members", []):
                binding["members"].append(member)
            await gcp.rest("POST", "resourcemanager", f"{policy_path}:setIamPolicy", {"policy": current})

        p.add(f"grant {email} {VM_ROLE} on project {project} (its only role)", grant)
    return p


async def run(gcp: GCPSession, region: str, emit: Callable[[str], None], subnet_cidr: Optional[str] = None,
              allow_ingress_from: Optional[str] = None, dry_run: bool = False) -> Plan:
    """Plan, print, apply (unless ``dry_run``), then print the roles needed."""
    p = await plan(gcp, region, subnet_cidr, allow_ingress_from)
    emit(f"coiled-lab setup gcp: project {gcp.project}, region {region}")
    await p.carry_out(emit, dry_run)
    emit("\nIAM roles for running `coiled-lab setup gcp` (remove them once setup is done):")
    for role, why in SETUP_ROLES.items():
        emit(f"  {role}: {why}")
    emit("\nIAM roles for everyday use (starting, watching and stopping clusters):")
    for role, why in EVERYDAY_ROLES.items():
        emit(f"  {role}: {why}")
    return p
