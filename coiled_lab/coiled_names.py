"""Coiled's keyword names, read into ClusterSpec's own fields.

A notebook written for ``coiled.Cluster`` should run here after changing the import, so
the names of Coiled's public API are taken with Coiled's meaning. Most are ClusterSpec
fields of the same name; the ones below are not, and :func:`translate` turns them into
fields before validation: a few are other spellings of a field (``compute_purchase_option``
is ``spot_policy``), a few are bags of options (``backend_options``, ``scheduler_options``)
whose keys map onto fields, and ``n_workers=[min, max]`` is an adaptive range. Names that
make no sense here (a Coiled account, Coiled's dashboard hosting) are refused with one line
saying why and what to use instead. Two names that set one field to different values are
an error naming both. No I/O: pure data, like the spec.
"""

from __future__ import annotations

import re
from typing import Any, Callable, Optional

SPOT_POLICIES = ("on-demand", "spot", "spot_with_fallback")


class NameProblem(ValueError):
    """A Coiled name given a value it cannot have here; ``field`` is the name the user typed."""

    def __init__(self, field: str, message: str):
        super().__init__(message)
        self.field = field


# Names taken as input and turned into fields (never stored): how a command line spells
# their value ("choice" of SPOT_POLICIES, "map" of KEY=VALUE, "list" of A,B) and its help.
MAPPED: dict[str, tuple[str, str]] = {
    "compute_purchase_option": ("choice", "Coiled's name for spot_policy"),
    "backend_options": ("map", "Coiled's cloud options: region/region_name, zone/zone_name, spot, "
                               "spot_on_demand_fallback (spot_policy), multizone (allow_cross_zone)"),
    "scheduler_options": ("map", "Options of the dask scheduler: idle_timeout (as the field idle_timeout)"),
    "scheduler_vm_types": ("list", "Coiled's list of scheduler instance types: one here (scheduler_vm_type)"),
}

# Coiled names with no meaning here: why, and what to use instead.
REFUSED: dict[str, str] = {
    "account": "coiled-lab has no Coiled accounts: clusters run in the cloud account whose credentials the Jupyter "
               "server holds; leave it out",
    "workspace": "coiled-lab has no Coiled workspaces: clusters run in the cloud account whose credentials the Jupyter "
                 "server holds; leave it out",
    "use_dashboard_https": "the dashboard is always reached over HTTPS through this Jupyter server "
                           "(cluster.dashboard_link); leave it out",
    "use_dashboard_public_ip": "the dashboard is reached through this Jupyter server, never on a public address; "
                               "leave it out",
    "dashboard_custom_subdomain": "the dashboard is served by this Jupyter server at /coiled-lab/clusters/<id>/"
                                  "dashboard/; leave it out",
    "container": "coiled-lab VMs install packages, not container images: use package_sync, or software= a "
                 "requirements file",
    "software_environment": "coiled-lab has no Coiled software environments: use package_sync, or software= a "
                            "requirements file",
    "credentials": "credentials are never forwarded implicitly: call cluster.send_credentials() once the cluster runs",
    "credentials_duration_seconds": "call cluster.send_credentials(); the credentials it sends are kept fresh",
    "private_to_creator": "clusters are private to this Jupyter server's user; leave it out",
    "jupyter": "JupyterLab is where you already are: coiled-lab runs no notebook server on the scheduler",
    "extra_worker_on_scheduler": "the scheduler runs only the scheduler; add a worker with n_workers",
    "host_setup_script": "VMs run coiled-lab's own bootstrap: put packages in package_sync or software, "
                         "variables in environ",
    "mount_bucket": "workers reach buckets with your data credentials: cluster.send_credentials()",
    "scheduler_port": "coiled-lab picks the ports and opens them only to allow_ingress_from",
    "protocol": "clusters always talk TLS (tls://) with a certificate of their own",
}

# backend_options keys taken here, and keys refused with the reason.
_BACKEND_KEYS = ("region", "region_name", "zone", "zone_name", "spot", "spot_on_demand_fallback", "multizone")
_BACKEND_REFUSED: dict[str, str] = {
    "ingress": "use allow_ingress_from (a CIDR, or 'me') and allow_ssh_from",
    "firewall": "use allow_ingress_from (a CIDR, or 'me') and allow_ssh_from",
    "keypair_name": "VMs take no key pair: open SSH with allow_ssh_from",
    "use_dashboard_public_ip": REFUSED["use_dashboard_public_ip"],
    "use_dashboard_https": REFUSED["use_dashboard_https"],
    "send_prometheus_metrics": "coiled-lab keeps usage samples itself: cluster.get_usage()",
    "prometheus_write": "coiled-lab keeps usage samples itself: cluster.get_usage()",
}
_SCHEDULER_KEYS = ("idle_timeout",)
_RANGE = re.compile(r"^\s*\[?\s*(-?\d+)\s*[:,]\s*(-?\d+)\s*\]?\s*$")  # "2:10", "2,10", "[2, 10]"


def translate(data: dict[str, Any], explicit: Optional[set[str]] = None,
              same: Optional[Callable[[str, Any, Any], bool]] = None) -> dict[str, Any]:
    """``data`` with Coiled's names turned into ClusterSpec fields; raise :class:`NameProblem`.

    ``explicit`` is what the user set (None: every key of ``data``): a field merely stored
    (a live cluster's spec read again with a change) never conflicts with a new name.
    ``same(field, a, b)`` tells whether two values of a field mean the same (``"20m"`` and
    1200); plain equality when not given.
    """
    for name in data:
        if isinstance(name, str) and name in REFUSED:
            raise NameProblem(name, f"{REFUSED[name]}")
    if not any(k in data for k in MAPPED) and not _is_range(data.get("n_workers")):
        return data
    out = dict(data)
    given = set(data) if explicit is None else set(explicit)
    # field -> the name that set it, for "a and b disagree"
    setters: dict[str, str] = {f: f for f in given if f in data and f not in MAPPED}
    same = same or (lambda _field, a, b: a == b)

    def put(field: str, value: Any, source: str) -> None:
        if field in setters and setters[field] != source and not same(field, out.get(field), value):
            other = setters[field]
            raise NameProblem(source, f"{source} and {other} disagree ({_shown(value)} and {_shown(out.get(field))} "
                                      f"for {field}); give one of them")
        out[field] = value
        setters.setdefault(field, source)

    if _is_range(data.get("n_workers")):
        low, high = _bounds(data["n_workers"])
        out.pop("n_workers")
        setters.pop("n_workers", None)
        put("adaptive", [low, high], "n_workers")
        put("n_workers", low, "n_workers")
    if "compute_purchase_option" in data:
        value = out.pop("compute_purchase_option")
        if value not in SPOT_POLICIES:
            raise NameProblem("compute_purchase_option", f"expected one of: {', '.join(SPOT_POLICIES)}")
        put("spot_policy", value, "compute_purchase_option")
    if "backend_options" in data:
        for field, value in _backend_options(out.pop("backend_options")).items():
            put(field, value, "backend_options")
    if "scheduler_options" in data:
        options = out.pop("scheduler_options")
        if not isinstance(options, dict):
            raise NameProblem("scheduler_options", f"expected a dict with some of: {', '.join(_SCHEDULER_KEYS)}")
        for key, value in options.items():
            if key not in _SCHEDULER_KEYS:
                raise NameProblem("scheduler_options", f"unknown key {_shown(key)}; allowed: "
                                                       f"{', '.join(_SCHEDULER_KEYS)}")
            put(key, value, "scheduler_options")
    if "scheduler_vm_types" in data:
        types = out.pop("scheduler_vm_types")
        types = [t.strip() for t in types.split(",") if t.strip()] if isinstance(types, str) else types
        if not isinstance(types, (list, tuple)) or len(types) != 1:
            raise NameProblem("scheduler_vm_types", "coiled-lab launches the scheduler on one instance type: "
                                                    "give a list of one (or scheduler_vm_type)")
        put("scheduler_vm_type", types[0], "scheduler_vm_types")
    return out


def _is_range(value: Any) -> bool:
    return isinstance(value, (list, tuple)) or (isinstance(value, str) and not value.strip().isdigit()
                                                and _RANGE.match(value) is not None)


def _bounds(value: Any) -> tuple[int, int]:
    """``[min, max]`` of an adaptive ``n_workers``; NameProblem naming n_workers otherwise."""
    from .spec import MAX_WORKERS

    if isinstance(value, str):
        value = list(_RANGE.match(value).groups())
    why = (f"expected a number of workers, or [min, max] with 0 <= min <= max <= {MAX_WORKERS} "
           "to adapt between them")
    if len(value) != 2:
        raise NameProblem("n_workers", why)
    try:
        low, high = (int(v) if not isinstance(v, (bool, float)) else None for v in value)
    except (TypeError, ValueError):
        raise NameProblem("n_workers", why) from None
    if low is None or high is None or not 0 <= low <= high <= MAX_WORKERS:
        raise NameProblem("n_workers", why)
    return low, high


def _backend_options(options: Any) -> dict[str, Any]:
    """The fields ``backend_options`` stands for."""
    if not isinstance(options, dict):
        raise NameProblem("backend_options", f"expected a dict with some of: {', '.join(_BACKEND_KEYS)}")
    out: dict[str, Any] = {}
    for key, value in options.items():
        if key in _BACKEND_REFUSED:
            raise NameProblem("backend_options", f"key {_shown(key)} is not taken here: {_BACKEND_REFUSED[key]}")
        if key not in _BACKEND_KEYS:
            raise NameProblem("backend_options", f"unknown key {_shown(key)}; allowed: {', '.join(_BACKEND_KEYS)}")
        if key in ("spot", "spot_on_demand_fallback", "multizone"):
            value = _flag(value)
            if value is None:
                raise NameProblem("backend_options", f"{key}: expected True or False, got {_shown(options[key])}")
            options = {**options, key: value}
    for key in ("region", "zone"):
        both = [k for k in (key, f"{key}_name") if k in options]
        if len(both) == 2 and options[both[0]] != options[both[1]]:
            raise NameProblem("backend_options", f"{both[0]} and {both[1]} disagree; give one of them")
        if both:
            out[key] = options[both[0]]
    if "spot" in options:
        fallback = options.get("spot_on_demand_fallback", False)
        out["spot_policy"] = ("spot_with_fallback" if fallback else "spot") if options["spot"] else "on-demand"
    elif "spot_on_demand_fallback" in options:
        raise NameProblem("backend_options", "spot_on_demand_fallback applies only with spot=True; give both")
    if "multizone" in options:
        out["allow_cross_zone"] = options["multizone"]
    return out


def _flag(value: Any) -> Optional[bool]:
    """True or False, also as a command line spells them (``spot=true``); None otherwise."""
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in ("true", "yes", "1", "false", "no", "0"):
        return value.strip().lower() in ("true", "yes", "1")
    return None


def _shown(value: Any) -> str:
    from .errors import quoted

    return quoted(value)
