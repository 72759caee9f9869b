"""ClusterSpec: the one vocabulary every front door speaks.

The sidebar form, the widget, ``%coiled start``, ``coiled-lab start``, the REST API and
``coiled_lab.Cluster(...)`` all build a :class:`ClusterSpec`; nothing else decides what a
valid cluster request is. Fields a caller leaves out come from dask config
(``coiled-lab.cluster.*``). Errors become :class:`ClusterSpecError`, which names the
field, the bad value and what is allowed, and serializes to the REST error shape.
"""

from __future__ import annotations

import ipaddress
import re
import sys
from typing import Annotated, Any, Literal, Optional

from pydantic import (
    BaseModel,
    ValidationInfo,
    BeforeValidator,
    ConfigDict,
    Field,
    PrivateAttr,
    ValidationError,
    field_validator,
    model_validator,
)

from . import config
from .errors import QUOTED_CHARS, ClusterSpecError, quoted

BACKENDS = ("local", "aws", "gcp")
SPOT_POLICIES = ("on-demand", "spot", "spot_with_fallback")
# Python versions (major.minor) a cloud cluster's VMs can run dask with. The bootstrap
# installs any of them on a bare image (uv's own builds); dask and distributed 2026.8
# declare Requires-Python >=3.10 and classifiers 3.10 to 3.14, and coiled-lab itself (its
# bootstrap runs on the VMs) requires 3.10 or newer.
SUPPORTED_PYTHONS = ("3.10", "3.11", "3.12", "3.13", "3.14")
MAX_WORKERS = 10_000  # hard ceiling for any backend; admins set lower limits in config
MAX_DURATION = 365 * 24 * 3600.0
MAX_MEMORY = 32 * 2**40  # the largest VMs of any cloud have less
NAME_PATTERN = r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$"
# Size limits of every free-form field (the field's help and the README say them): far
# above any real value, and low enough that no request can bloat the store, the cluster
# list every UI polls, or a VM's start-up data.
MAX_NAME = 63  # a cluster name, an instance type, a region or zone
MAX_VM_TYPES = 32  # worker_vm_types entries
MAX_TEXT = 64  # a CIDR, a duration, a size, a Python version
MAX_PATH = 4096  # software: a file path
MAX_TAGS, MAX_TAG_KEY, MAX_TAG_VALUE = 32, 128, 256  # within both clouds' limits with coiled-lab's own tags
MAX_ENVIRON, MAX_ENVIRON_CHARS = 64, 16384  # variables; all names and values together
MAX_ERRORS = 10  # errors listed in one answer
MAX_PACKAGE_NAMES = 256  # package_sync_ignore / package_sync_only entries
_PACKAGE_NAME = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9._-]{0,98}[A-Za-z0-9])?$")  # PEP 508 names
MIN_DISK_GB, MAX_DISK_GB = 8, 16384  # a VM root disk: what the images need, what EBS and GCE allow
MAX_THREADS = 1024  # worker_options nthreads
WORKER_OPTIONS = ("nthreads", "memory_limit")
WORKER_CLASSES = ("distributed.Nanny", "distributed.Worker", "dask_cuda.CUDAWorker")
RESERVED_TAG_PREFIX = "coiled-lab:"
ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")  # an environment variable's name
# Cloud region and zone names: us-east-1, us-east-1b, europe-west4, europe-west4-a.
_PLACE = re.compile(r"^[a-z]{2,}(-[a-z]+)*-?[a-z]*[0-9]+[a-z]?(-[a-z])?$")

_TYPE_NAME = re.compile(r"^[a-z0-9][a-z0-9.\-]{1,62}$")  # m6i.xlarge, n2-standard-4


def _check_type_name(name: str) -> None:
    if not _TYPE_NAME.match(name):
        raise ValueError(f"{quoted(name)} is not an instance type name (such as 'm6i.xlarge' or 'n2-standard-4')")


def running_python() -> str:
    """This interpreter's major.minor ("3.11"): the environment a spec without
    ``python_version`` asks from (the server's, until kernels send their own)."""
    return f"{sys.version_info[0]}.{sys.version_info[1]}"


def _supported() -> str:
    return ", ".join(SUPPORTED_PYTHONS)


def _python_version(value: Any) -> Optional[str]:
    """``"3.11"``. A number (YAML, JSON and dask's environment variables read 3.12 as one)
    is taken when it spells a supported version; 3.10 reads as 3.1, so that one is refused
    with a word on quoting."""
    if value is None:
        return None
    if isinstance(value, float) and repr(value) in SUPPORTED_PYTHONS:
        return repr(value)
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        raise ValueError(f"expected a major.minor version as a string such as '3.11' (a number loses digits: "
                         f"3.10 reads as 3.1); supported: {_supported()}")
    if not isinstance(value, str) or len(value) > MAX_TEXT:
        raise ValueError(f"expected a major.minor version as a string such as '3.11'; supported: {_supported()}")
    text = value.strip()
    if not re.fullmatch(r"[0-9]+\.[0-9]+", text):
        raise ValueError(f"expected a major.minor version such as '3.11'; supported: {_supported()}")
    if text not in SUPPORTED_PYTHONS:
        raise ValueError(f"Python {text} is not supported; supported: {_supported()}")
    return text


def cluster_python(spec: "ClusterSpec") -> str:
    """The Python major.minor a cloud cluster's VMs run: the spec's ``python_version``, else
    the asking environment's (this interpreter's). Raise :class:`ClusterSpecError` naming
    ``python_version`` when that one is not supported. No I/O."""
    if spec.python_version:
        return spec.python_version
    here = running_python()
    if here not in SUPPORTED_PYTHONS:
        raise ClusterSpecError(
            f"python_version: None is not allowed: left out, it means the Python of the environment asking "
            f"for the cluster ({here}), which cluster VMs cannot run dask with; set python_version to one of: "
            f"{_supported()}", "python_version")
    return here


def check_place(field: str, value: Optional[str]) -> Optional[str]:
    """A region or zone name, as the clouds spell them (``us-east-1``, ``europe-west4-a``)."""
    if value is not None and (len(value) > MAX_NAME or not _PLACE.match(value)):
        raise ClusterSpecError(
            f"{field}: {quoted(value)} is not allowed: expected a {field} name of at most {MAX_NAME} characters "
            f"such as {'us-east-1' if field == 'region' else 'us-east-1a'} or "
            f"{'europe-west4' if field == 'region' else 'europe-west4-a'}", field)
    return value


def check_environ_size(environ: dict[str, str]) -> None:
    """Raise ValueError when environment variables for the dask processes are more than
    :data:`MAX_ENVIRON_CHARS` characters of names and values in all."""
    size = sum(len(k) + len(v) for k, v in environ.items())
    if size > MAX_ENVIRON_CHARS:
        raise ValueError(f"expected at most {MAX_ENVIRON_CHARS} characters of names and values in all, got {size}")


def _duration(value: Any) -> Optional[float]:
    """Seconds from ``20m``, ``"1 hour"``, ``90`` (seconds); ``None``/``"off"`` disables."""
    if value is None or (isinstance(value, str) and value.strip().lower() in ("", "off", "none", "never")):
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float, str)) or \
            (isinstance(value, str) and len(value) > MAX_TEXT):
        raise ValueError("expected a duration such as '20m', '1h' or a number of seconds")
    if isinstance(value, (int, float)) and value <= 0:
        raise ValueError("expected a positive duration such as '20m', or 'off'")
    from dask.utils import parse_timedelta

    try:
        seconds = parse_timedelta(value, default="seconds")
    except (ValueError, KeyError, TypeError, OverflowError):  # OverflowError: "1e400s" is infinite
        raise ValueError("expected a duration such as '20m', '1h' or a number of seconds") from None
    if seconds is None or not 0 < seconds <= MAX_DURATION:
        raise ValueError("expected a positive duration of at most 365 days such as '20m', or 'off'")
    return float(seconds)


def _memory(value: Any) -> Optional[int]:
    """Bytes from ``"16 GiB"``, ``"8GB"`` or an integer."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float, str)) or \
            (isinstance(value, str) and len(value) > MAX_TEXT):
        raise ValueError("expected a size such as '16 GiB'")
    from dask.utils import parse_bytes

    try:
        n = parse_bytes(value)
    except (ValueError, TypeError, OverflowError):  # OverflowError: "1e400B" is infinite
        raise ValueError("expected a size such as '16 GiB' or '8GB'") from None
    if not 0 < n <= MAX_MEMORY:
        raise ValueError("expected a positive size of at most 32 TiB such as '16 GiB'")
    return int(n)


Duration = Annotated[Optional[float], BeforeValidator(_duration)]
Memory = Annotated[Optional[int], BeforeValidator(_memory)]


def _default(field: str):
    """A default_factory reading ``coiled-lab.cluster.<field>`` at the time of the request."""

    def factory():
        value = config.get(f"cluster.{field}")
        return dict(value) if isinstance(value, dict) else value

    return factory


class ClusterSpec(BaseModel):
    """What a user asks for. Pure data: no I/O, no cloud calls."""

    model_config = ConfigDict(extra="forbid", validate_default=True, frozen=True)
    # Set by validation: the fields the user set, and whether this is a stored spec revised.
    _explicit: frozenset[str] = PrivateAttr(default=frozenset())
    _revised: bool = PrivateAttr(default=False)

    name: Optional[str] = Field(
        None,  # its pattern bounds its length
        description=f"Cluster name (at most {MAX_NAME} lower-case letters, digits, '-'; not another cluster's id); "
                    "generated when left out",
    )
    backend: Literal["local", "aws", "gcp"] = Field(
        default_factory=_default("backend"), description="Where the cluster runs"
    )
    n_workers: int = Field(
        default_factory=_default("n_workers"), ge=0, le=MAX_WORKERS, description="Number of workers"
    )
    worker_vm_types: Optional[list[str]] = Field(
        default_factory=_default("worker_vm_types"),
        max_length=MAX_VM_TYPES,
        description=f"Instance types for workers, in order of preference (at most {MAX_VM_TYPES})",
    )
    worker_cpu: Optional[int] = Field(
        default_factory=_default("worker_cpu"), ge=1, le=448, description="vCPUs per worker"
    )
    worker_memory: Memory = Field(
        default_factory=_default("worker_memory"), description="Memory per worker, e.g. '16 GiB'"
    )
    worker_gpu: Optional[int] = Field(
        default_factory=_default("worker_gpu"), ge=0, le=16, description="GPUs per worker"
    )
    scheduler_vm_type: Optional[str] = Field(
        default_factory=_default("scheduler_vm_type"), max_length=MAX_NAME,
        description="Instance type for the scheduler",
    )
    scheduler_cpu: Optional[int] = Field(
        default_factory=_default("scheduler_cpu"), ge=1, le=448,
        description="vCPUs of the scheduler's VM (instead of scheduler_vm_type)",
    )
    scheduler_memory: Memory = Field(
        default_factory=_default("scheduler_memory"),
        description="Memory of the scheduler's VM, e.g. '8 GiB' (instead of scheduler_vm_type)",
    )
    adaptive: Optional[list[int]] = Field(
        default_factory=_default("adaptive"), min_length=2, max_length=2,
        description="[min, max]: adapt the number of workers between them (n_workers=[min, max] sets it)",
    )
    worker_options: dict[str, Any] = Field(
        default_factory=_default("worker_options"),
        description=f"Options of each worker's dask process: {', '.join(WORKER_OPTIONS)}",
    )
    worker_class: Optional[Literal[WORKER_CLASSES]] = Field(  # type: ignore[valid-type]
        default_factory=_default("worker_class"),
        description="The dask worker class (distributed.Nanny restarts a worker that dies); left out: the backend's",
    )
    worker_disk_size: Optional[int] = Field(
        default_factory=_default("worker_disk_size"), ge=MIN_DISK_GB, le=MAX_DISK_GB,
        description="Root disk of each VM in GiB (a number, or a size such as '200 GiB'); left out: the image's",
    )
    spot_policy: Literal["on-demand", "spot", "spot_with_fallback"] = Field(
        default_factory=_default("spot_policy"), description="Purchase option for workers"
    )
    region: Optional[str] = Field(default_factory=_default("region"), max_length=MAX_NAME, description="Cloud region")
    zone: Optional[str] = Field(default_factory=_default("zone"), max_length=MAX_NAME, description="Availability zone")
    use_best_zone: bool = Field(
        default_factory=_default("use_best_zone"),
        description="Without a zone, let the cloud pick the zone with capacity (the cluster stays in one zone)",
    )
    arm: bool = Field(default_factory=_default("arm"), description="ARM VMs (AWS Graviton, GCP Tau T2A)")
    allow_ssh_from: Optional[str] = Field(
        default_factory=_default("allow_ssh_from"), max_length=MAX_TEXT,
        description="CIDR (or 'me') that may reach port 22 of the VMs; left out: SSH stays closed",
    )
    allow_cross_zone: bool = Field(
        default_factory=_default("allow_cross_zone"),
        description="Spread workers over zones (cross-zone traffic costs money)",
    )
    allow_ingress_from: str = Field(
        default_factory=_default("allow_ingress_from"), max_length=MAX_TEXT,
        description="CIDR allowed to reach scheduler and dashboard; 'me' = this server's address",
    )
    connect_via: Literal["auto", "public", "private"] = Field(
        default_factory=_default("connect_via"),
        description="How this server reaches the scheduler: its public or private address; "
                    "auto = private from inside the cluster's network",
    )
    idle_timeout: Duration = Field(
        default_factory=_default("idle_timeout"), description="Stop after this long with no work"
    )
    no_client_timeout: Duration = Field(
        default_factory=_default("no_client_timeout"),
        description="Stop after this long without a connected client",
    )
    max_lifetime: Duration = Field(
        default_factory=_default("max_lifetime"), description="Stop after this long whatever happens"
    )
    tags: dict[str, str] = Field(
        default_factory=_default("tags"),
        description=f"Tags/labels on every resource (at most {MAX_TAGS}; keys of at most {MAX_TAG_KEY} characters, "
                    f"values of at most {MAX_TAG_VALUE})",
    )
    environ: dict[str, str] = Field(
        default_factory=_default("environ"),
        description=f"Environment variables for the dask processes (at most {MAX_ENVIRON}, "
                    f"{MAX_ENVIRON_CHARS} characters of names and values in all)",
    )
    package_sync: bool = Field(
        default_factory=_default("package_sync"), description="Install this environment's packages on the VMs"
    )
    package_sync_ignore: list[str] = Field(
        default_factory=_default("package_sync_ignore"), max_length=MAX_PACKAGE_NAMES,
        description="Packages package sync leaves out (names; their dependencies are still synced)",
    )
    package_sync_only: Optional[list[str]] = Field(
        default_factory=_default("package_sync_only"), max_length=MAX_PACKAGE_NAMES,
        description="Sync these packages only (names; dask and distributed are always synced)",
    )
    package_sync_strict: bool = Field(
        default_factory=_default("package_sync_strict"),
        description="Refuse to launch unless the VMs can have exactly this environment: the same platform, "
                    "and every package at its version (else the cluster ends in error)",
    )
    package_sync_fail_on: Literal["critical-only", "warning-or-higher"] = Field(
        default_factory=_default("package_sync_fail_on"),
        description="critical-only: only what dask needs must sync; warning-or-higher: any package that cannot "
                    "be synced (not shipped, conda-only, not installable on the VMs) fails the cluster",
    )
    software: Optional[str] = Field(
        default_factory=_default("software"), max_length=MAX_PATH,
        description="Requirements file (a .txt path on the Jupyter server) to install instead of package sync",
    )
    python_version: Optional[str] = Field(
        default_factory=_default("python_version"),
        description=f"Python (major.minor: {', '.join(SUPPORTED_PYTHONS)}) the cluster runs; "
                    "left out: the one of the environment asking for the cluster",
    )

    @field_validator("name")
    @classmethod
    def _check_name(cls, v: Optional[str]) -> Optional[str]:
        if v is not None and not re.match(NAME_PATTERN, v):
            raise ValueError(
                "expected 1-63 lower-case letters, digits or '-', starting and ending with a letter or digit"
            )
        return v

    @field_validator("package_sync_ignore", "package_sync_only", mode="before")
    @classmethod
    def _package_names(cls, v: Any) -> Any:
        if isinstance(v, str):  # "pandas, polars" from a command line or a form
            v = [n.strip() for n in v.split(",") if n.strip()]
        if isinstance(v, (list, tuple)):
            if len(v) > MAX_PACKAGE_NAMES:
                raise ValueError(f"expected at most {MAX_PACKAGE_NAMES} package names, got {len(v)}")
            for name in v:
                if not isinstance(name, str) or not _PACKAGE_NAME.match(name):
                    raise ValueError(f"{quoted(name)} is not a package name (such as 'pandas' or 'scikit-learn')")
        return v

    @field_validator("worker_vm_types", mode="before")
    @classmethod
    def _one_or_many_types(cls, v: Any) -> Any:
        if isinstance(v, str):
            if len(v) > MAX_VM_TYPES * (MAX_NAME + 2):
                raise ValueError(f"expected at most {MAX_VM_TYPES} instance type names")
            return [t.strip() for t in v.split(",") if t.strip()]
        return v

    @field_validator("worker_vm_types")
    @classmethod
    def _check_types(cls, v: Optional[list[str]]) -> Optional[list[str]]:
        if v is not None:
            if not v:
                raise ValueError("expected at least one instance type, or leave it out")
            for t in v:
                _check_type_name(t)
        return v

    @field_validator("scheduler_vm_type")
    @classmethod
    def _check_scheduler_type(cls, v: Optional[str]) -> Optional[str]:
        if v is not None:
            _check_type_name(v)
        return v

    @field_validator("region", "zone")
    @classmethod
    def _check_place(cls, v: Optional[str], info) -> Optional[str]:
        try:
            return check_place(info.field_name, v)
        except ClusterSpecError as exc:
            raise ValueError(exc.message.split(" is not allowed: ", 1)[1]) from None

    @field_validator("python_version", mode="before")
    @classmethod
    def _check_python(cls, v: Any) -> Optional[str]:
        return _python_version(v)

    @model_validator(mode="before")
    @classmethod
    def _coiled_names(cls, data: Any, info: ValidationInfo) -> Any:
        """Coiled's names (``n_workers=[2, 10]``, ``compute_purchase_option``...) as fields."""
        if not isinstance(data, dict):
            return data
        from .coiled_names import NameProblem, translate

        try:
            return translate(data, (info.context or {}).get("explicit"), _same_value)
        except NameProblem as exc:
            raise _CombinationError(exc.field, str(exc)) from None

    @field_validator("adaptive")
    @classmethod
    def _check_adaptive(cls, v: Optional[list[int]]) -> Optional[list[int]]:
        if v is not None and not 0 <= v[0] <= v[1] <= MAX_WORKERS:
            raise ValueError(f"expected [min, max] with 0 <= min <= max <= {MAX_WORKERS}")
        return v

    @field_validator("worker_options", mode="before")
    @classmethod
    def _check_worker_options(cls, v: Any) -> Any:
        if not isinstance(v, dict):
            return v
        out: dict[str, Any] = {}
        for key, value in v.items():
            if key == "nthreads":
                n = int(value) if isinstance(value, str) and value.strip().isdigit() else value
                if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= MAX_THREADS:
                    raise ValueError(f"nthreads: {quoted(value)} is not a number of threads; expected a whole "
                                     f"number from 1 to {MAX_THREADS}")
                out[key] = n
            elif key == "memory_limit":
                try:
                    out[key] = _memory(value)
                except ValueError as exc:
                    raise ValueError(f"memory_limit: {quoted(value)}: {exc}") from None
            else:
                raise ValueError(f"unknown option {quoted(key)}; allowed: {', '.join(WORKER_OPTIONS)}")
        return out

    @field_validator("worker_disk_size", mode="before")
    @classmethod
    def _disk_gib(cls, v: Any) -> Any:
        if isinstance(v, str) and not v.strip().isdigit():
            return -(-_memory(v) // 2**30)  # a size such as "200 GiB": whole GiB, rounded up
        return v

    @field_validator("allow_ingress_from", "allow_ssh_from")
    @classmethod
    def _check_cidr(cls, v: Optional[str]) -> Optional[str]:
        if v is None or v == "me":
            return v
        try:
            return str(ipaddress.ip_network(v, strict=False))
        except ValueError:
            raise ValueError("expected 'me' or a CIDR such as '203.0.113.0/24'") from None

    @field_validator("tags", "environ", mode="before")
    @classmethod
    def _few_entries(cls, v: Any, info: ValidationInfo) -> Any:
        # Before each entry is checked: a map of a million bad entries is one error, not a million.
        most = MAX_TAGS if info.field_name == "tags" else MAX_ENVIRON
        if isinstance(v, dict) and len(v) > most:
            raise ValueError(f"expected at most {most} entries, got {len(v)}")
        return v

    @field_validator("tags")
    @classmethod
    def _check_tags(cls, v: dict[str, str]) -> dict[str, str]:
        for key, value in v.items():
            if not key or len(key) > MAX_TAG_KEY:
                raise ValueError(f"tag key {quoted(key)} must have 1 to {MAX_TAG_KEY} characters")
            if key.startswith(RESERVED_TAG_PREFIX):
                raise ValueError(f"tag key {quoted(key)} uses the reserved prefix {RESERVED_TAG_PREFIX!r}")
            if len(value) > MAX_TAG_VALUE:
                raise ValueError(f"tag {quoted(key)} has a value longer than {MAX_TAG_VALUE} characters")
        return v

    @field_validator("environ")
    @classmethod
    def _check_environ(cls, v: dict[str, str]) -> dict[str, str]:
        check_environ_size(v)
        for key in v:
            if not ENV_NAME.match(key):
                raise ValueError(f"{quoted(key)} is not an environment variable name")
        return v

    @model_validator(mode="after")
    def _check_combinations(self, info: ValidationInfo) -> "ClusterSpec":
        # What the user set (a stored spec re-checked with changes names them in the context).
        explicit = (info.context or {}).get("explicit", self.model_fields_set)
        self._explicit, self._revised = frozenset(explicit), info.context is not None
        # Given a value, not just present: a stored spec (public()) carries every field, sizes as None.
        sized = [f for f in ("worker_cpu", "worker_memory") if f in explicit and getattr(self, f) is not None]
        if self.worker_vm_types and sized:
            field = sized[0]
            raise _CombinationError(field, "give either worker_vm_types or worker_cpu/worker_memory, not both")
        if self.scheduler_vm_type and "scheduler_vm_type" in explicit:
            sized = [f for f in ("scheduler_cpu", "scheduler_memory") if f in explicit and getattr(self, f) is not None]
            if sized:
                raise _CombinationError(sized[0], "give either scheduler_vm_type or scheduler_cpu/scheduler_memory, "
                                                  "not both")
        if self.zone and "zone" in explicit and "use_best_zone" in explicit and self.use_best_zone:
            raise _CombinationError("use_best_zone", "use_best_zone lets the cloud pick the zone, and zone names "
                                                     "one; give one of them")
        if self.adaptive and not self.adaptive[0] <= self.n_workers <= self.adaptive[1]:
            low, high = self.adaptive
            raise _CombinationError("n_workers", f"the cluster adapts between {low} and {high} workers "
                                                 f"(n_workers=[{low}, {high}]); give a number within them, or "
                                                 "new bounds as n_workers=[min, max]")
        if self.arm and self.worker_gpu:
            raise _CombinationError("arm", "GPU workers run on x86_64 machines; leave arm out, or worker_gpu")
        if self.worker_class == "dask_cuda.CUDAWorker" and not self.worker_gpu:
            raise _CombinationError("worker_class", "dask_cuda.CUDAWorker needs GPUs: set worker_gpu")
        if self.software and "package_sync" in explicit and self.package_sync:
            raise _CombinationError("package_sync", "package_sync cannot be on when software is given")
        if self.package_sync_only is not None and self.package_sync_ignore and "package_sync_only" in explicit:
            raise _CombinationError("package_sync_only", "give package_sync_only or package_sync_ignore, not both")
        return self

    def public(self) -> dict[str, Any]:
        """JSON-ready dict, durations in seconds and memory in bytes."""
        return self.model_dump(mode="json")

    def __eq__(self, other: object) -> bool:
        """Two specs are equal when their fields are: who set which is not part of the value."""
        return isinstance(other, ClusterSpec) and self.__dict__ == other.__dict__

    @property
    def explicit(self) -> frozenset[str]:
        """The fields the user set in this request: every field given to a new spec, only
        the changes of a stored one (:func:`revise`). Rules about explicit choices (a
        backend's ``check_spec``) judge these, so that a stored spec read again (a live
        cluster's next pass, its teardown) is never refused by today's config."""
        return self._explicit

    def judged(self, field: str) -> bool:
        """Whether a rule about ``field`` applies: always to a new request, and to a stored
        spec only where this revision changes it."""
        return not self._revised or field in self._explicit

    def refused(self, field: str, reason: str) -> ClusterSpecError:
        """The error for ``field``'s value, in the shape every rule uses."""
        return ClusterSpecError(f"{field}: {quoted(getattr(self, field, None))} is not allowed: {reason}", field)


def _same_value(field: str, a: Any, b: Any) -> bool:
    """Whether two spellings of ``field`` mean the same (``"20m"`` and 1200 seconds)."""
    if field == "idle_timeout":
        try:
            return _duration(a) == _duration(b)
        except ValueError:
            return False
    return a == b


class _CombinationError(ValueError):
    def __init__(self, field: str, message: str):
        super().__init__(message)
        self.field = field


FIELDS: tuple[str, ...] = tuple(ClusterSpec.model_fields)


def parse_spec(data: Any = None, **kwargs: Any) -> ClusterSpec:
    """Validate a request into a ClusterSpec, or raise :class:`ClusterSpecError`."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ClusterSpecError(f"expected a JSON object of cluster fields, got {type(data).__name__}", None)
    merged = {**data, **kwargs}
    try:
        return ClusterSpec(**merged)
    except ValidationError as exc:
        raise spec_error(exc, merged) from None
    except TypeError as exc:  # e.g. non-string keys
        raise ClusterSpecError(str(exc), None) from None


def revise(stored: dict[str, Any], changes: Optional[dict[str, Any]] = None) -> ClusterSpec:
    """A stored (already valid) spec with some fields changed, validated again.

    Only ``changes`` count as set by the user: a stored spec carries every field, including
    defaults that a rule about explicit choices (e.g. no spot on the local backend) must
    not take for the user's.
    """
    changes = changes or {}
    if not isinstance(changes, dict):
        raise ClusterSpecError(f"expected a JSON object of cluster fields, got {type(changes).__name__}", None)
    merged = {**stored, **changes}
    try:
        return ClusterSpec.model_validate(merged, context={"explicit": set(changes)})
    except ValidationError as exc:
        raise spec_error(exc, merged) from None


def spec_error(exc: ValidationError, data: dict[str, Any] | None = None) -> ClusterSpecError:
    """Turn pydantic's error list into one ClusterSpecError naming field, value and what is allowed."""
    errors = []
    found = exc.errors(include_url=False)
    for err in found[:MAX_ERRORS]:
        loc = [str(p) for p in err.get("loc", ())]
        field = loc[0] if loc else None
        if err["type"] == "extra_forbidden":
            from .coiled_names import MAPPED

            message = (f"unknown field {quoted(field)}; allowed fields: {', '.join(FIELDS)}; "
                       f"Coiled's names also taken: {', '.join(MAPPED)}")
        else:
            ctx_error = (err.get("ctx") or {}).get("error")
            if isinstance(ctx_error, _CombinationError):
                field = ctx_error.field
                value = (data or {}).get(field)
                message = f"{field}: {quoted(value)} is not allowed: {ctx_error}"
            else:
                msg = err["msg"]
                if msg.startswith("Value error, "):
                    msg = msg[len("Value error, ") :]
                where = ".".join(p if len(p) <= MAX_TEXT else quoted(p) for p in loc) if loc else "spec"
                value = err.get("input")
                if data is not None and field in data and len(loc) == 1:
                    value = data[field]
                message = f"{where}: {quoted(value)} is not allowed: {msg}"
        errors.append({"field": field[:QUOTED_CHARS] if field else field, "error": message})
    if len(found) > MAX_ERRORS:
        errors.append({"field": None, "error": f"and {len(found) - MAX_ERRORS} more errors"})
    first = errors[0] if errors else {"field": None, "error": str(exc)}
    return ClusterSpecError(first["error"], first["field"], errors)


def describe_fields() -> list[dict[str, Any]]:
    """Name, type, default and help of every field: the source for CLI/magic options and forms."""
    out = []
    for name, info in ClusterSpec.model_fields.items():
        default = info.default_factory() if info.default_factory else info.default
        out.append({"name": name, "default": default, "help": info.description or ""})
    return out
