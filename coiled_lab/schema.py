"""What the new-cluster forms are built from: ClusterSpec's JSON schema, with this server's
defaults and limits filled in and a UI table saying how each field is shown.

The sidebar's form (TypeScript, through ``GET /coiled-lab/api/schema?backend=``) and the
notebook's ``ClusterForm`` (in-process) used to re-declare labels, bounds, enums and the
worker ceiling each; they now read them here, so a new field, a new policy or a lowered
``local.max-workers`` reaches both at once. Every ClusterSpec field is either in
:data:`FORM` (shown, with its label, group, widget and backends) or in
:data:`NOT_IN_THE_FORMS` with the reason; a test fails when a new field is in neither.
"""

from __future__ import annotations

import copy
import os
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Callable, Literal, Optional

from . import config
from .spec import BACKENDS, MAX_WORKERS, ClusterSpec, ClusterSpecError, describe_fields
from .errors import quoted

CLOUD = ("aws", "gcp")
Widget = Literal["text", "choice", "integer", "size", "duration", "pairs", "types", "region", "zone", "check"]


@dataclass(frozen=True)
class FieldUI:
    """How a form shows one field. ``widget`` says what kind of input (and how the text
    typed is turned into the field's value); ``sizing`` marks the fields of one way of
    sizing workers on a cloud (by instance types, or by resources), of which the sidebar
    shows one at a time."""

    label: str
    group: Literal["basic", "advanced"]
    backends: tuple[str, ...]
    widget: Widget
    placeholder: str = ""
    sizing: Optional[Literal["types", "resources"]] = None

    def public(self, order: int) -> dict[str, Any]:
        return {"order": order, "group": self.group, "backends": list(self.backends), "widget": self.widget,
                "placeholder": self.placeholder, "sizing": self.sizing}


# The fields both forms show, in the order they show them.
FORM: dict[str, FieldUI] = {
    "name": FieldUI("Name", "basic", BACKENDS, "text", "generated"),
    "backend": FieldUI("Backend", "basic", BACKENDS, "choice"),
    "region": FieldUI("Region", "basic", CLOUD, "region", "default"),
    "zone": FieldUI("Zone", "basic", CLOUD, "zone", "any"),
    "worker_vm_types": FieldUI("Worker instance types", "basic", CLOUD, "types", sizing="types"),
    "worker_cpu": FieldUI("vCPUs per worker", "basic", BACKENDS, "integer", "any", "resources"),
    "worker_memory": FieldUI("Memory per worker", "basic", BACKENDS, "size", "any, e.g. 16 GiB", "resources"),
    "worker_gpu": FieldUI("GPUs per worker", "basic", CLOUD, "integer", "0", "resources"),
    "n_workers": FieldUI("Workers", "basic", BACKENDS, "integer"),
    "spot_policy": FieldUI("Purchase option", "basic", CLOUD, "choice"),
    "idle_timeout": FieldUI("Idle timeout", "basic", BACKENDS, "duration", "e.g. 20m, 1h or off"),
    "allow_ingress_from": FieldUI("Open to", "advanced", CLOUD, "text", "me, or a CIDR such as 203.0.113.0/24"),
    "tags": FieldUI("Tags", "advanced", BACKENDS, "pairs", "team=geo, project=x"),
    "software": FieldUI("Requirements file", "advanced", BACKENDS, "text",
                        ".txt path on the server; empty: package sync"),
    "package_sync": FieldUI("Replicate this environment's packages on the workers", "advanced", BACKENDS, "check"),
    "worker_disk_size": FieldUI("Disk per worker (GiB)", "advanced", CLOUD, "size", "the image's, e.g. 200"),
    "arm": FieldUI("ARM VMs (AWS Graviton, GCP Tau T2A)", "advanced", CLOUD, "check"),
    "use_best_zone": FieldUI("Without a zone, let the cloud pick one with capacity", "advanced", CLOUD, "check"),
    "allow_ssh_from": FieldUI("SSH open to", "advanced", CLOUD, "text", "closed; me, or a CIDR"),
}

# ClusterSpec fields the forms leave to the server's defaults, and why.
NOT_IN_THE_FORMS: dict[str, str] = {
    "scheduler_vm_type": "the backend sizes the scheduler from the workers (the estimate names the type); "
                         "set it with --scheduler-vm-type or coiled-lab.cluster.scheduler-vm-type",
    "scheduler_cpu": "the backend sizes the scheduler from the workers; set it with --scheduler-cpu or "
                     "coiled-lab.cluster.scheduler-cpu",
    "scheduler_memory": "the backend sizes the scheduler from the workers; set it with --scheduler-memory or "
                        "coiled-lab.cluster.scheduler-memory",
    "adaptive": "a [min, max] range the forms have no input for: Cluster(n_workers=[min, max]) or --adaptive; "
                "the form asks for a fixed number of workers",
    "worker_options": "options of dask's worker process (threads, memory limit), free-form: give them in code "
                      "(Cluster(worker_options=...)) or with --worker-options",
    "worker_class": "a choice of dask's internals whose backend default suits the forms; code or --worker-class",
    "allow_cross_zone": "a cost policy of the deployment (cross-zone traffic is billed): "
                        "coiled-lab.cluster.allow-cross-zone",
    "connect_via": "follows from where this Jupyter server runs, which the admin knows: coiled-lab.cluster.connect-via",
    "no_client_timeout": "a safety net the deployment sets (coiled-lab.cluster.no-client-timeout); "
                         "a running cluster's timeouts are edited from its card",
    "max_lifetime": "a safety net the deployment sets (coiled-lab.cluster.max-lifetime); "
                    "a running cluster's timeouts are edited from its card",
    "environ": "values often secret, which a shared form would show; give them in code "
               "(Cluster(environ=...)) or with --env",
    "python_version": "the form's cluster runs the Python of the kernel (or server) it takes its packages from",
    "package_sync_ignore": "a list of package names, given in code (Cluster(package_sync_ignore=[...])), with "
                           "--package-sync-ignore, or as coiled-lab.cluster.package-sync-ignore",
    "package_sync_only": "a list of package names, given in code, with --package-sync-only, or as "
                         "coiled-lab.cluster.package-sync-only",
    "package_sync_strict": "a policy of the deployment or of code (Cluster(package_sync_strict=True)); "
                           "coiled-lab.cluster.package-sync-strict",
    "package_sync_fail_on": "a policy of the deployment or of code; coiled-lab.cluster.package-sync-fail-on",
}


def machine() -> dict[str, int]:
    """This machine's vCPUs and memory: what a local cluster's workers share (the same
    figures as the local backend's catalog)."""
    import psutil

    return {"cpu": os.cpu_count() or 1, "memory": int(psutil.virtual_memory().total)}


@lru_cache(maxsize=1)
def _spec_schema() -> dict[str, Any]:
    return ClusterSpec.model_json_schema()


def _hoist(prop: dict[str, Any]) -> dict[str, Any]:
    """Bounds and choices of an optional field's non-null branch at the property's top
    (still valid JSON schema: ``minimum`` applies to numbers only), so a form reads
    ``minimum`` without walking ``anyOf``."""
    for branch in prop.get("anyOf", []):
        for key in ("minimum", "maximum", "enum", "maxLength", "maxItems"):
            if key in branch:
                prop.setdefault(key, branch[key])
    return prop


# A limit's value for whoever the form is for, and the config key that sets it ("limits.<key>"
# here; the control plane's per-user and per-group entries in the server's forms).
LimitOf = Callable[[str], tuple[Any, str]]


def global_limit(key: str) -> tuple[Any, str]:
    return config.get(f"limits.{key}"), f"coiled-lab.limits.{key}"


def _worker_ceiling(backend: str, limit_of: LimitOf) -> tuple[int, Optional[str]]:
    """The most workers a request on ``backend`` may ask for, and the config key that says so."""
    ceilings = [(MAX_WORKERS, None)]
    most, where = limit_of("max-workers")
    if most is not None:
        ceilings.append((int(most), where))
    if backend == "local":
        ceilings.append((int(config.get("local.max-workers")), "coiled-lab.local.max-workers"))
    return min(ceilings, key=lambda c: c[0])


def form_schema(backend: Optional[str] = None, limit_of: LimitOf = global_limit) -> dict[str, Any]:
    """ClusterSpec's JSON schema for a form on ``backend`` (default: the server's), within
    the limits ``limit_of`` gives (default: the global ones; the server passes the asking
    user's, :func:`coiled_lab.control.limits.for_forms`).

    Each property carries ``default`` (the server's dask config, as written there: a
    form shows ``20 minutes``, not 1200.0) and, for fields in a form, ``title`` (the label)
    and ``x-ui`` (:class:`FieldUI`). ``x-form`` lists the fields this backend's form shows,
    in order; ``x-not-in-forms`` the others with the reason; on the local backend
    ``x-machine`` is this machine's vCPUs and memory, for the form's warnings.
    """
    defaults = {f["name"]: f["default"] for f in describe_fields()}
    if backend is None:
        backend = defaults["backend"]
    if backend not in BACKENDS:
        raise ClusterSpecError(f"backend: {quoted(backend)} is not allowed; allowed: {', '.join(BACKENDS)}", "backend")
    schema = copy.deepcopy(_spec_schema())
    for name, prop in schema["properties"].items():
        _hoist(prop)
        prop["default"] = defaults.get(name)
        ui = FORM.get(name)
        if ui is not None:
            prop["title"] = ui.label
            prop["x-ui"] = ui.public(list(FORM).index(name))
    workers = schema["properties"]["n_workers"]
    workers["maximum"], limit = _worker_ceiling(backend, limit_of)
    if limit:
        workers["x-limit"] = limit
    regions, where = limit_of("allowed-regions")
    if regions and backend != "local":
        schema["properties"]["region"]["enum"] = list(regions)
        schema["properties"]["region"]["x-limit"] = where
    schema["x-backend"] = backend
    schema["x-form"] = [name for name, ui in FORM.items() if backend in ui.backends and name in schema["properties"]]
    schema["x-not-in-forms"] = dict(NOT_IN_THE_FORMS)
    if backend == "local":
        schema["x-machine"] = machine()
    return schema


def bounds_error(schema: dict[str, Any], field: str, value: int) -> Optional[str]:
    """The one line a form shows at an integer field out of the schema's bounds (None when
    within): the same words whichever form, naming the limit that sets the bound."""
    prop = schema["properties"][field]
    limit = f" ({prop['x-limit']})" if prop.get("x-limit") else ""
    if "minimum" in prop and value < prop["minimum"]:
        return f"{field}: {value} is not allowed: expected at least {prop['minimum']}"
    if "maximum" in prop and value > prop["maximum"]:
        return f"{field}: {value} is not allowed: expected at most {prop['maximum']}{limit}"
    return None
