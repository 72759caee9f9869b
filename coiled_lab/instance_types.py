"""``coiled_lab.list_instance_types(...)``: the instance types a backend offers, filtered as
Coiled's function of that name filters them.

It answers from the backend's catalog (``GET /catalog`` through the Jupyter server, or the
manager in this process): the cloud's own list when it answers in time, else the bundled
price snapshot; :attr:`InstanceTypes.source` says which, and the repr says it first, so a
user never takes a dated snapshot for today's offer. Filters are exact values or
``[min, max]`` ranges; a bad one is one line naming the argument.
"""

from __future__ import annotations

from typing import Any, Optional

ARCHES = ("x86_64", "arm64")


class InstanceTypes(dict):
    """Instance types by name; ``source`` says where the list came from (``"live: ..."`` or
    ``"snapshot: ..."``) and ``offline`` why the cloud was not asked, if it was not."""

    def __init__(self, types: dict[str, dict[str, Any]], source: str, offline: Optional[str]):
        super().__init__(types)
        self.source = source
        self.offline = offline

    def __repr__(self) -> str:
        why = f" ({self.offline})" if self.offline else ""
        return f"<{len(self)} instance types from {self.source}{why}> {dict.__repr__(self)}"


def list_instance_types(backend: Optional[str] = None, region: Optional[str] = None, cores: Any = None,
                        memory: Any = None, gpus: Any = None, arch: Optional[str] = None) -> InstanceTypes:
    """Instance types of ``backend`` (default: the configured one) in ``region`` with
    ``cores`` vCPUs, ``memory`` (``"16 GiB"`` or bytes), ``gpus`` and ``arch``
    (``"x86_64"`` or ``"arm64"``); each of the first three an exact value or ``[min, max]``.
    Each entry: ``name``, ``cores``, ``memory`` (bytes), ``gpus``, ``arch`` and, where the
    catalog knows them, prices and zones."""
    from . import config
    from .connect import get_control
    from .spec import ClusterSpecError, check_place

    wanted_cores = _bounds("cores", cores, int)
    wanted_memory = _bounds("memory", memory, _bytes)
    wanted_gpus = _bounds("gpus", gpus, int)
    if arch is not None and arch not in ARCHES:
        raise ClusterSpecError(f"arch: {arch!r} is not allowed: expected one of: {', '.join(ARCHES)}", "arch")
    backend = backend or config.get("cluster.backend")
    check_place("region", region)
    control = get_control()
    catalog = control.run(control.catalog(backend, region))
    found = {}
    for item in catalog.get("instance_types", []):
        entry = {"name": item["name"], "cores": item["vcpu"], "memory": item["memory"], "gpus": item.get("gpu", 0),
                 "arch": item.get("arch", "x86_64"),
                 **{k: v for k, v in item.items() if k not in ("name", "vcpu", "memory", "gpu", "arch")}}
        if _within(entry["cores"], wanted_cores) and _within(entry["memory"], wanted_memory) and \
                _within(entry["gpus"], wanted_gpus) and (arch is None or entry["arch"] == arch):
            found[entry["name"]] = entry
    source = catalog.get("source") or f"live: {catalog.get('backend', backend)}'s own catalog"
    return InstanceTypes(found, source, catalog.get("offline"))


def _bytes(value: Any) -> int:
    from dask.utils import parse_bytes

    return int(parse_bytes(value))


def _bounds(name: str, value: Any, read) -> Optional[tuple[int, int]]:
    """``value`` as inclusive (low, high): an exact value is both; None when not given."""
    from .spec import ClusterSpecError

    if value is None:
        return None
    pair = list(value) if isinstance(value, (list, tuple)) else [value, value]
    try:
        if len(pair) != 2 or any(isinstance(v, bool) for v in pair):
            raise ValueError
        low, high = (read(v) for v in pair)
    except (TypeError, ValueError):
        raise ClusterSpecError(f"{name}: {value!r} is not allowed: expected a value or [min, max]", name) from None
    if not 0 <= low <= high:
        raise ClusterSpecError(f"{name}: {value!r} is not allowed: expected [min, max] with 0 <= min <= max", name)
    return low, high


def _within(value: int, bounds: Optional[tuple[int, int]]) -> bool:
    return bounds is None or bounds[0] <= value <= bounds[1]
