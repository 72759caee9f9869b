"""Launching and deleting VMs: one ``instances.insert`` for a scheduler, one regional
``instances.bulkInsert`` for any number of workers, one batch request to delete up to 1000.

A launch waits for its operation (``zoneOperations.wait`` / ``regionOperations.wait``: one
request that returns when the operation is done), because GCE reports a lack of capacity
there (``ZONE_RESOURCE_POOL_EXHAUSTED``), not in the answer to the insert. The scheduler
then moves on to the next zone; workers are asked for in one ``bulkInsert`` whose
location policy allows the scheduler's zone (and, with ``allow_cross_zone``, the others),
named ``<prefix>-0001``... by its name pattern. With ``spot_with_fallback``, Spot
capacity refused means one more ``bulkInsert`` on demand. A bulkInsert carries one
machine type; when GCE has no capacity for it in any allowed zone (:class:`NoCapacity`),
the backend asks again with its next choice of type.

Deletion uses Compute's batch endpoint: up to 1000 ``instances.delete`` calls in one HTTP
request (``multipart/mixed``), so stopping a cluster costs a request or two at any size.

A VM that ends by itself (a timeout, its scheduler gone, a failed boot) deletes itself, so
that no stopped VM is left whose disk still bills: right after a launch, each new VM's own
IAM policy grants the VMs' service account :data:`SELF_DELETE_ROLE_ID` (``compute.instances.delete``
and nothing else; ``coiled-lab setup gcp`` makes it) on that VM alone, in one batch request
(:func:`grant_self_delete`), and its tokens carry the Compute scope; the startup script
(:mod:`.startup`) then deletes the VM when it ends. A cluster with a ``max_lifetime`` also
gets GCE's own deadline: ``scheduling.maxRunDuration`` with ``instanceTerminationAction=DELETE``.
"""

from __future__ import annotations

import json
import re
import secrets
import time
import uuid
from typing import Any, Callable, Optional

from ... import config
from ..base import Instance
from .catalog import MachineType
from .session import GCPError, GCPSession, is_conflict

EXHAUSTED = ("ZONE_RESOURCE_POOL_EXHAUSTED", "ZONE_RESOURCE_POOL_EXHAUSTED_WITH_DETAILS")
SPOT_REFUSED = (*EXHAUSTED, "QUOTA_EXCEEDED")  # no Spot capacity, or no Spot (preemptible) quota
ALIVE = ("PROVISIONING", "STAGING", "RUNNING", "REPAIRING")
MAX_BULK = 1000  # instances per bulkInsert, and calls per batch request
LOG_SCOPE = "https://www.googleapis.com/auth/logging.write"
# The environment bucket (read, and the scheduler's upload of a new build); what the
# service account may do there is the bucket's IAM policy's to say.
STORAGE_SCOPE = "https://www.googleapis.com/auth/devstorage.read_write"
# Compute Engine, for a VM to delete itself: what the token may do there is IAM's to say,
# and the service account's only Compute grants are on each VM's own policy (SELF_DELETE_ROLE_ID).
COMPUTE_SCOPE = "https://www.googleapis.com/auth/compute"
# The custom role (``projects/<project>/roles/<id>``) a VM's own policy grants the VMs'
# service account, and its permissions: a VM may delete itself, nothing more.
SELF_DELETE_ROLE_ID = "coiledLabVmSelfDelete"
SELF_DELETE_PERMISSIONS = ("compute.instances.delete",)
# GCE's deadline for a VM of a cluster with a max_lifetime is that lifetime plus the start
# timeout (the boot, which the scheduler's lifetime clock does not count); GCE's minimum is 30 s.
MIN_RUN_DURATION = 30


class NoCapacity(GCPError):
    """GCE has no capacity for a machine type in any of the zones it was asked for (its
    ``code``, one of :data:`EXHAUSTED`): another machine type may still have some."""

    def __init__(self, message: str, code: str):
        super().__init__(message)
        self.code = code


def operation_error(operation: Any) -> Optional[tuple[str, str]]:
    """(code, message) of a finished operation that failed, else None."""
    errors = list(operation.error.errors) if operation.error else []
    if not errors:
        return None
    return errors[0].code, "; ".join(f"{e.code}: {e.message}" for e in errors)


def service_account(project: str) -> str:
    return f"{config.get('gcp.service-account')}@{project}.iam.gserviceaccount.com"


def self_delete_role(project: str) -> str:
    return f"projects/{project}/roles/{SELF_DELETE_ROLE_ID}"


def run_duration(lifetime_left: Optional[float]) -> Optional[int]:
    """Seconds GCE lets a VM run before it deletes it: what is left of its cluster's
    ``max_lifetime`` (None: no limit) plus the start timeout, at least GCE's minimum."""
    if lifetime_left is None:
        return None
    return max(MIN_RUN_DURATION, int(lifetime_left + float(config.get("gcp.start-timeout"))))


def properties(machine: MachineType, zone: Optional[str], image: str, subnetwork: str, project: str,
               script: str, labels: dict[str, str], tags: list[str], spot: bool,
               storage: bool = False, lifetime_left: Optional[float] = None,
               disk_size_gb: Optional[int] = None) -> dict[str, Any]:
    """An instance (``zone`` given: for ``insert``) or a bulk launch's instance properties
    (no zone: names instead of zonal URLs). ``storage``: its service account's tokens may
    reach Cloud Storage (the cluster uses the environment bucket); else Cloud Logging and
    Compute (where IAM lets it delete itself) only. ``lifetime_left``: seconds left of the
    cluster's ``max_lifetime``, after which GCE deletes the VM (:func:`run_duration`).
    ``disk_size_gb``: its boot disk (``worker_disk_size``); None: ``gcp.disk-size-gb``."""
    def zonal(kind: str, name: str) -> str:
        return f"zones/{zone}/{kind}/{name}" if zone else name

    scheduling: dict[str, Any] = {
        # GPUs cannot move to another host: such VMs stop for maintenance.
        "on_host_maintenance": "TERMINATE" if machine.gpus or spot else "MIGRATE",
        "automatic_restart": not spot,
        "provisioning_model": "SPOT" if spot else "STANDARD",
    }
    deadline = run_duration(lifetime_left)
    if deadline is not None:
        scheduling["max_run_duration"] = {"seconds": deadline}
    if spot or deadline is not None:
        # What GCE does when it preempts a Spot VM or its run duration is over: delete it
        # (with its disk), not stop it.
        scheduling["instance_termination_action"] = "DELETE"
    out: dict[str, Any] = {
        "machine_type": zonal("machineTypes", machine.name),
        "disks": [{
            "boot": True, "auto_delete": True,
            "initialize_params": {"source_image": image,
                                  "disk_size_gb": int(disk_size_gb or config.get("gcp.disk-size-gb")),
                                  "disk_type": zonal("diskTypes", config.get("gcp.disk-type")), "labels": labels},
        }],
        "network_interfaces": [{"subnetwork": subnetwork,
                                "access_configs": [{"name": "External NAT", "type_": "ONE_TO_ONE_NAT"}]}],
        "service_accounts": [{"email": service_account(project),
                              "scopes": [LOG_SCOPE, COMPUTE_SCOPE, *([STORAGE_SCOPE] if storage else [])]}],
        "metadata": {"items": [{"key": "startup-script", "value": script}]},
        "labels": labels,
        "tags": {"items": tags},
        "scheduling": scheduling,
    }
    if machine.attached:
        out["guest_accelerators"] = [{"accelerator_type": zonal("acceleratorTypes", machine.gpu_type or ""),
                                      "accelerator_count": machine.gpus}]
    return out


async def insert_scheduler(
    gcp: GCPSession, name: str, zones: list[str], make: Callable[[str], dict[str, Any]],
) -> tuple[str, list[str]]:
    """Insert the scheduler in the first of ``zones`` with capacity; (its zone, why the
    zones before it refused)."""
    client, refused = gcp.compute("Instances"), []
    for zone in zones:
        try:
            # A retry (same request id) of a request GCE carried out answers with its operation.
            operation = await gcp.call(client.insert_unary, request={
                "project": gcp.project, "zone": zone, "instance_resource": {"name": name, **make(zone)},
                "request_id": str(uuid.uuid4())})
        except Exception as exc:
            if is_conflict(exc):  # made by an earlier attempt whose answer was lost: the name is the cluster's
                return zone, refused
            raise
        if operation.status != operation.Status.DONE:
            operation = await gcp.call(gcp.compute("ZoneOperations").wait, project=gcp.project, zone=zone,
                                       operation=operation.name)
        error = operation_error(operation)
        if error is None:
            return zone, refused
        if error[0] not in EXHAUSTED:
            raise GCPError(f"GCE did not create the scheduler in {zone}: {error[1]}")
        refused.append(f"{zone}: {error[0]}")
    raise GCPError(f"GCE has no capacity for the scheduler in any zone ({'; '.join(refused)})")


async def bulk_insert(
    gcp: GCPSession, region: str, allowed: list[str], all_zones: list[str], count: int,
    props: dict[str, Any], prefix: str,
) -> tuple[list[tuple[str, Optional[str]]], Optional[tuple[str, str]]]:
    """One ``bulkInsert`` of ``count`` VMs into the allowed zones (all or none, as GCE does
    by default); ((name, zone) of each, error code and message when none were made)."""
    pattern = f"{prefix}-{secrets.token_hex(2)}-####"
    locations = {f"zones/{z}": {"preference": "ALLOW" if z in allowed else "DENY"} for z in all_zones}
    # The request id makes a retry of a request GCE already carried out answer with the same
    # operation, instead of making ``count`` more VMs under the pattern's next numbers.
    operation = await gcp.call(gcp.compute("RegionInstances").bulk_insert_unary, request={
        "project": gcp.project, "region": region, "request_id": str(uuid.uuid4()),
        "bulk_insert_instance_resource_resource": {
            "count": count, "name_pattern": pattern, "instance_properties": props,
            "location_policy": {"locations": locations},
        }})
    if operation.status != operation.Status.DONE:
        operation = await gcp.call(gcp.compute("RegionOperations").wait, project=gcp.project, region=region,
                                   operation=operation.name)
    error = operation_error(operation)
    if error:
        return [], error
    status = operation.instances_bulk_insert_operation_metadata.per_location_status
    made = {key.rsplit("/", 1)[-1]: s.created_vm_count for key, s in status.items() if s.created_vm_count}
    zone = next(iter(made)) if len(made) == 1 else None  # spread over zones: describe() tells where
    return [(pattern.replace("####", f"{i:04d}"), zone) for i in range(1, count + 1)], None


async def launch_workers(
    gcp: GCPSession, region: str, allowed: list[str], all_zones: list[str], count: int,
    make: Callable[[bool], dict[str, Any]], prefix: str, spot_policy: str, machine: MachineType,
    notify: Callable[[str, str], None],
) -> list[Instance]:
    """``count`` workers in one request (two with a Spot fallback); :class:`NoCapacity`
    when GCE had none for ``machine`` in the ``allowed`` zones, GCPError when it refused
    for another reason."""
    spot = spot_policy != "on-demand"
    made, error = await bulk_insert(gcp, region, allowed, all_zones, count, make(spot), prefix)
    if error and spot_policy == "spot_with_fallback" and error[0] in SPOT_REFUSED:
        refused, spot = error, False
        made, error = await bulk_insert(gcp, region, allowed, all_zones, count, make(False), prefix)
        if not error:  # told once it is so: with no capacity at all, the next machine type gets its own try
            notify("spot", f"no Spot capacity for {count} workers ({refused[1]}); they run on demand "
                           f"({machine.name}) instead")
    if error:
        message = f"GCE launched no {machine.name} worker in {', '.join(allowed)} ({error[1]})"
        raise NoCapacity(message, error[0]) if error[0] in EXHAUSTED else GCPError(message)
    now = time.time()
    return [Instance(id=name, role="worker", vm_type=machine.name, zone=zone, spot=spot, launched_at=now,
                     data={"region": region, "machine": machine.machine()}) for name, zone in made]


async def batch(gcp: GCPSession, calls: list[tuple[str, str, Optional[dict[str, Any]]]]) -> list[tuple[int, str]]:
    """Compute calls (method, path under ``/compute/v1/projects/<project>/``, JSON body or
    None) through the batch endpoint, up to 1000 per HTTP request; (status, body) of each, in order."""
    answers: list[tuple[int, str]] = []
    for start in range(0, len(calls), MAX_BULK):
        boundary = f"coiled-lab-{secrets.token_hex(8)}"
        parts = []
        for i, (method, path, payload) in enumerate(calls[start:start + MAX_BULK]):
            content = json.dumps(payload) if payload is not None else ""
            parts.append(f"--{boundary}\r\nContent-Type: application/http\r\nContent-ID: <{i}>\r\n\r\n"
                         f"{method} /compute/v1/projects/{gcp.project}/{path} HTTP/1.1\r\n"
                         + (f"Content-Type: application/json\r\nContent-Length: {len(content.encode())}\r\n"
                            if content else "") + f"\r\n{content}\r\n")
        body = "".join(parts) + f"--{boundary}--\r\n"

        def send(body: str = body, boundary: str = boundary) -> tuple[str, str]:
            from google.api_core import exceptions

            response = gcp.http().post(f"{gcp.endpoint('compute')}/batch/compute/v1", data=body.encode(),
                                       headers={"Content-Type": f"multipart/mixed; boundary={boundary}"}, timeout=120)
            if response.status_code >= 400:
                raise exceptions.from_http_response(response)
            return response.text, response.headers.get("Content-Type", "")

        text, content_type = await gcp.call(send)
        answers += _parts(text, content_type)
    return answers


def _parts(text: str, content_type: str) -> list[tuple[int, str]]:
    """(status, body) of each HTTP response in a batch answer (``multipart/mixed``)."""
    found = re.search(r'boundary="?([^";]+)"?', content_type)
    parts = text.split(f"--{found.group(1)}") if found else [text]
    out = []
    for part in parts:
        status = re.search(r"^HTTP/1\.1 (\d{3})", part, re.M)
        if status:
            rest = part[status.end():].replace("\r\n", "\n")
            out.append((int(status.group(1)), rest.split("\n\n", 1)[1].strip() if "\n\n" in rest else ""))
    return out


async def delete(gcp: GCPSession, instances: list[tuple[str, str]]) -> None:
    """Delete these (zone, name) VMs through the batch endpoint; already gone is fine."""
    answers = await batch(gcp, [("DELETE", f"zones/{zone}/instances/{name}", None) for zone, name in instances])
    failed = [code for code, _ in answers if code >= 400 and code != 404]
    if failed:
        raise GCPError(f"GCE refused to delete {len(failed)} of {len(instances)} VMs (HTTP {failed[0]})")


async def grant_self_delete(gcp: GCPSession, instances: list[tuple[str, str]]) -> None:
    """Let each of these (zone, name) VMs delete itself and no other: its own IAM policy
    (a new VM's is empty: it is set, not read and changed) grants the VMs' service account
    :data:`SELF_DELETE_ROLE_ID`; one batch request. GCPError naming the first refusal."""
    policy = {"policy": {"bindings": [{"role": self_delete_role(gcp.project),
                                       "members": [f"serviceAccount:{service_account(gcp.project)}"]}]}}
    answers = await batch(gcp, [("POST", f"zones/{zone}/instances/{name}/setIamPolicy", policy)
                                for zone, name in instances])
    failed = [(code, text) for code, text in answers if code >= 400]
    if failed:
        code, text = failed[0]
        try:
            why = json.loads(text)["error"]["message"]
        except (ValueError, KeyError, TypeError):
            why = text[:200]
        raise GCPError(f"GCE refused to set the IAM policy of {len(failed)} of {len(instances)} VMs "
                       f"(HTTP {code}: {why})")
