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
  ``roles/logging.logWriter`` (write log entries, nothing else);
- the custom role ``coiledLabVmSelfDelete`` (``compute.instances.delete`` only), which each
  new VM's own IAM policy grants that service account, so that a VM that ends deletes
  itself, disk and all, instead of leaving a stopped VM whose disk bills
  (:func:`~.instances.grant_self_delete`; granted on no project or other resource);
- the bucket of built environments (:mod:`.envstore`; not with ``coiled-lab.gcp.env-bucket:
  false``), in the region prepared when it is first made: uniform bucket-level access,
  public access prevention enforced, a lifecycle rule deleting objects
  ``coiled-lab.gcp.env-expire-days`` old, label ``coiled-lab=managed``; its IAM policy lets
  the service account read its objects (``roles/storage.objectViewer``) and write those
  under ``envs/`` only (``roles/storage.objectUser`` with a condition on the name). An
  existing bucket whose settings differ is updated; one of that name in another project
  is an error.
"""

from __future__ import annotations

from typing import Any, Callable, Optional

from ... import config
from .. import ingress
from ..plan import Plan
from ..envstore import ARCHIVE
from . import envstore, network
from .instances import SELF_DELETE_PERMISSIONS, SELF_DELETE_ROLE_ID, self_delete_role, service_account
from .session import GCPError, GCPSession, is_conflict, is_not_found

VM_ROLE = "roles/logging.logWriter"
BUCKET_READ_ROLE = "roles/storage.objectViewer"
BUCKET_WRITE_ROLE = "roles/storage.objectUser"  # create, and replace a damaged archive
WRITTEN_PREFIX = ARCHIVE.split("/", 1)[0] + "/"  # what VMs write: envs/
MANAGED_LABEL = {"coiled-lab": "managed"}
SETUP_ROLES = {
    "roles/compute.networkAdmin": "create the network and subnetwork",
    "roles/compute.securityAdmin": "create the firewall rules",
    "roles/iam.serviceAccountAdmin": "create the VMs' service account",
    "roles/resourcemanager.projectIamAdmin": f"grant that service account {VM_ROLE}",
    "roles/iam.roleAdmin": f"create the custom role {SELF_DELETE_ROLE_ID}, with which a VM deletes itself",
}
BUCKET_SETUP_ROLES = {"roles/storage.admin": "create the environment bucket, set its settings and IAM policy"}
EVERYDAY_ROLES = {
    "roles/compute.instanceAdmin.v1": "launch, list and delete VMs, read their serial output, let each new VM "
                                      f"delete itself ({SELF_DELETE_ROLE_ID} on its own IAM policy)",
    "roles/iam.serviceAccountUser": "run VMs as the coiled-lab service account (grant it on that account only)",
    "roles/logging.viewer": "read the clusters' logs",
    "roles/compute.securityAdmin": "open the scheduler to a CIDR no firewall rule opens yet "
                                   "(not needed if every cluster uses the CIDRs setup opened)",
}
# On the environment bucket only: storage.buckets.get, storage.objects.get and
# storage.objects.create (put what a new environment is built from; never replace).
BUCKET_EVERYDAY_ROLES = ("roles/storage.legacyBucketReader", "roles/storage.objectViewer",
                         "roles/storage.objectCreator")


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
    _, open_to = await ingress.reach(config.get("cluster.connect-via"), source, "gcp", f"{project}/{name}",
                                     gcp.endpoint("compute"), GCPError)
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

        p.add(f"grant {email} {VM_ROLE} on project {project} (its only role on the project)", grant)
    await _plan_self_delete_role(p, gcp)
    if config.get("gcp.env-bucket") is not False:
        await _plan_bucket(p, gcp, region, member)
    return p


async def _plan_self_delete_role(p: Plan, gcp: GCPSession) -> None:
    """The custom role a VM's own IAM policy grants it, to delete itself: made, brought
    back (a deleted custom role keeps its id for weeks), or given exactly its permissions."""
    path = f"/v1/{self_delete_role(gcp.project)}"
    role = await _get(lambda: gcp.rest("GET", "iam", path))
    wanted = sorted(SELF_DELETE_PERMISSIONS)
    if role is None:
        async def create_role() -> None:
            await gcp.rest("POST", "iam", f"/v1/projects/{gcp.project}/roles", {
                "roleId": SELF_DELETE_ROLE_ID,
                "role": {"title": "coiled-lab VM self-delete", "includedPermissions": wanted, "stage": "GA",
                         "description": "granted on each coiled-lab VM's own IAM policy: the VM deletes itself "
                                        "when it ends, nothing else"}})

        p.add(f"create custom role {SELF_DELETE_ROLE_ID} ({', '.join(wanted)}), which each VM gets on itself only",
              create_role)
        return
    if role.get("deleted"):
        async def undelete_role() -> None:
            await gcp.rest("POST", "iam", f"{path}:undelete", {"etag": role.get("etag")})

        p.add(f"undelete custom role {SELF_DELETE_ROLE_ID}", undelete_role)
    if sorted(role.get("includedPermissions", [])) != wanted:
        async def update_role() -> None:
            await gcp.rest("PATCH", "iam", path, {"includedPermissions": wanted},
                           params={"updateMask": "includedPermissions"})

        p.add(f"set the permissions of custom role {SELF_DELETE_ROLE_ID} to {', '.join(wanted)}", update_role)


def bucket_settings(days: int) -> dict[str, Any]:
    """What setup makes sure of on the environment bucket (besides its IAM policy)."""
    return {"iamConfiguration": {"uniformBucketLevelAccess": {"enabled": True}, "publicAccessPrevention": "enforced"},
            "lifecycle": {"rule": [expiry_rule(days)]}, "labels": dict(MANAGED_LABEL)}


def expiry_rule(days: int) -> dict[str, Any]:
    return {"action": {"type": "Delete"}, "condition": {"age": days}}


def _is_expiry(rule: dict[str, Any]) -> bool:
    """A rule deleting objects by age alone: ours (maybe with another number of days)."""
    return rule.get("action", {}).get("type") == "Delete" and set(rule.get("condition", {})) == {"age"}


def bucket_changes(found: dict[str, Any], days: int) -> tuple[list[str], dict[str, Any]]:
    """How an existing bucket differs from :func:`bucket_settings`: (what, the PATCH body)."""
    what: list[str] = []
    patch: dict[str, Any] = {}
    iam = found.get("iamConfiguration", {})
    if not iam.get("uniformBucketLevelAccess", {}).get("enabled"):
        what.append("turn on uniform bucket-level access")
        patch.setdefault("iamConfiguration", {})["uniformBucketLevelAccess"] = {"enabled": True}
    if iam.get("publicAccessPrevention") != "enforced":
        what.append("enforce public access prevention")
        patch.setdefault("iamConfiguration", {})["publicAccessPrevention"] = "enforced"
    rules = list(found.get("lifecycle", {}).get("rule", []))
    if expiry_rule(days) not in rules:
        what.append(f"delete objects {days} days old")
        patch["lifecycle"] = {"rule": [r for r in rules if not _is_expiry(r)] + [expiry_rule(days)]}
    if any(found.get("labels", {}).get(k) != v for k, v in MANAGED_LABEL.items()):
        what.append("label it coiled-lab=managed")
        patch["labels"] = dict(MANAGED_LABEL)
    return what, patch


def vm_bindings(bucket: str, member: str) -> list[dict[str, Any]]:
    """The VMs' grants on the bucket: read everything, write under ``envs/`` only."""
    return [{"role": BUCKET_READ_ROLE, "members": [member]},
            {"role": BUCKET_WRITE_ROLE, "members": [member], "condition": {
                "title": "coiled-lab-envs-written",
                "description": "coiled-lab VMs write built environments, nothing else",
                "expression": f'resource.name.startsWith("projects/_/buckets/{bucket}/objects/{WRITTEN_PREFIX}")'}}]


def _same_condition(a: Optional[dict[str, Any]], b: Optional[dict[str, Any]]) -> bool:
    return (a or {}).get("expression") == (b or {}).get("expression")


def _granted(policy: dict[str, Any], wanted: dict[str, Any], member: str) -> bool:
    return any(b.get("role") == wanted["role"] and _same_condition(b.get("condition"), wanted.get("condition"))
               and member in b.get("members", []) for b in policy.get("bindings", []))


async def _plan_bucket(p: Plan, gcp: GCPSession, region: str, member: str) -> None:
    name, days = envstore.bucket_name(gcp), int(config.get("gcp.env-expire-days"))
    other = ("set coiled-lab.gcp.env-bucket to another name (or to false: no environment bucket, every VM "
             "installs its environment from the package index)")
    try:
        found = await envstore.bucket(gcp, name)
    except Exception as exc:
        if getattr(exc, "code", None) == 403:
            raise GCPError(f"bucket {name}: access refused ({getattr(exc, 'message', exc)}): another project owns a "
                           f"bucket of that name, or these credentials lack storage.buckets.get; {other}") from None
        raise
    if found is not None and await envstore.foreign(gcp, found):
        raise GCPError(f"a bucket named {name} exists in another project (bucket names are global); {other}")
    path = f"/storage/v1/b/{name}"
    if found is None:
        async def create_bucket() -> None:
            try:
                await gcp.rest("POST", "storage", "/storage/v1/b", {"name": name, "location": region,
                                                                     **bucket_settings(days)},
                               params={"project": gcp.project})
            except Exception as exc:
                if not is_conflict(exc):
                    raise
                made = await envstore.bucket(gcp, name)  # made a moment ago by another setup, or taken
                if made is None or await envstore.foreign(gcp, made):
                    raise GCPError(f"bucket name {name} is taken (bucket names are global); {other}") from None
                changes = bucket_changes(made, days)[1]
                if changes:
                    await gcp.rest("PATCH", "storage", path, changes)

        p.add(f"create storage bucket {name} in {region} for built environments: uniform bucket-level access, "
              f"no public access, objects deleted {days} days after they were written", create_bucket)
        policy: dict[str, Any] = {"bindings": []}
    else:
        what, changes = bucket_changes(found, days)
        if changes:
            async def update_bucket(changes: dict[str, Any] = changes) -> None:
                await gcp.rest("PATCH", "storage", path, changes)

            p.add(f"update storage bucket {name}: {', '.join(what)}", update_bucket)
        policy = await gcp.rest("GET", "storage", f"{path}/iam", params={"optionsRequestedPolicyVersion": 3})
    missing = [b for b in vm_bindings(name, member) if not _granted(policy, b, member)]
    if missing:
        async def grant_bucket() -> None:
            # Read again just before writing: the etag makes a concurrent change fail, not vanish.
            current = await gcp.rest("GET", "storage", f"{path}/iam", params={"optionsRequestedPolicyVersion": 3})
            bindings = current.setdefault("bindings", [])
            for wanted in vm_bindings(name, member):
                if _granted(current, wanted, member):
                    continue
                binding = next((b for b in bindings if b.get("role") == wanted["role"]
                                and _same_condition(b.get("condition"), wanted.get("condition"))), None)
                if binding is None:
                    bindings.append(wanted)
                else:
                    binding.setdefault("members", []).append(member)
            current["version"] = 3  # conditions
            await gcp.rest("PUT", "storage", f"{path}/iam", {k: v for k, v in current.items()
                                                             if k in ("bindings", "etag", "version")})

        email = member.split(":", 1)[1]
        p.add(f"let {email} read bucket {name} ({BUCKET_READ_ROLE}) and write under {WRITTEN_PREFIX} only "
              f"({BUCKET_WRITE_ROLE} on that prefix)", grant_bucket)


async def run(gcp: GCPSession, region: str, emit: Callable[[str], None], subnet_cidr: Optional[str] = None,
              allow_ingress_from: Optional[str] = None, dry_run: bool = False) -> Plan:
    """Plan, print, apply (unless ``dry_run``), then print the roles needed."""
    p = await plan(gcp, region, subnet_cidr, allow_ingress_from)
    emit(f"coiled-lab setup gcp: project {gcp.project}, region {region}")
    await p.carry_out(emit, dry_run)
    bucket = config.get("gcp.env-bucket") is not False
    emit("\nIAM roles for running `coiled-lab setup gcp` (remove them once setup is done):")
    for role, why in {**SETUP_ROLES, **(BUCKET_SETUP_ROLES if bucket else {})}.items():
        emit(f"  {role}: {why}")
    emit("\nIAM roles for everyday use (starting, watching and stopping clusters):")
    for role, why in EVERYDAY_ROLES.items():
        emit(f"  {role}: {why}")
    if bucket:
        emit(f"  {', '.join(BUCKET_EVERYDAY_ROLES)} on bucket {envstore.bucket_name(gcp)} only: find it and put what "
             f"a new environment is built from ({', '.join(envstore.EVERYDAY_PERMISSIONS)})")
    return p
