import dask.config
import pytest

from coiled_lab.backends.local import LocalBackend
from coiled_lab.spec import FIELDS, ClusterSpec, ClusterSpecError, parse_spec


@pytest.mark.parametrize(
    "field, value, allowed",
    [
        ("n_workers", -1, "greater than or equal to 0"),
        ("n_workers", 10**7, "less than or equal to 10000"),
        ("n_workers", "many", "valid integer"),
        ("n_workers", 1.5, "valid integer"),
        ("backend", "azure", "'local', 'aws' or 'gcp'"),
        ("spot_policy", "cheap", "'on-demand', 'spot' or 'spot_with_fallback'"),
        ("name", "Has Spaces", "lower-case letters"),
        ("name", "x" * 64, "1-63"),
        ("worker_cpu", 0, "greater than or equal to 1"),
        ("worker_gpu", -1, "greater than or equal to 0"),
        ("worker_memory", "lots", "size such as"),
        ("worker_memory", -5, "positive size"),
        ("worker_vm_types", ["M6I XL"], "instance type name"),
        ("worker_vm_types", [], "at least one"),
        ("idle_timeout", "soon", "duration such as"),
        ("idle_timeout", -3, "positive duration"),
        ("no_client_timeout", True, "duration such as"),
        ("max_lifetime", "1 fortnight", "duration such as"),
        ("allow_ingress_from", "everyone", "'me' or a CIDR"),
        ("allow_cross_zone", "maybe", "valid boolean"),
        ("tags", {"coiled-lab:cluster": "x"}, "reserved prefix"),
        ("tags", "a=b", "valid dictionary"),
        ("environ", {"1BAD": "x"}, "environment variable name"),
        ("package_sync", "perhaps", "valid boolean"),
    ],
)
def test_bad_value_names_field_value_and_what_is_allowed(field, value, allowed):
    backend = {"backend": "aws"} if field in ("spot_policy", "worker_gpu", "worker_vm_types") else {}
    with pytest.raises(ClusterSpecError) as info:
        parse_spec({**backend, field: value})
    err = info.value
    assert err.field == field
    assert err.message.startswith(f"{field}:")
    assert allowed in err.message
    body = err.to_json()
    assert body["field"] == field and body["error"] == err.message


def test_unknown_field_lists_allowed_fields():
    with pytest.raises(ClusterSpecError) as info:
        parse_spec({"n_worker": 3})
    assert info.value.field == "n_worker"
    assert "unknown field 'n_worker'" in info.value.message
    assert "n_workers" in info.value.message


def test_not_a_mapping():
    with pytest.raises(ClusterSpecError):
        parse_spec([1, 2])


@pytest.mark.parametrize(
    "fields, field",
    [
        ({"worker_gpu": 1}, "worker_gpu"),
        ({"spot_policy": "spot"}, "spot_policy"),
        ({"worker_vm_types": ["m6i.large"]}, "worker_vm_types"),
        ({"region": "us-east-1"}, "region"),
        ({"n_workers": 65}, "n_workers"),
    ],
)
def test_local_backend_refuses_cloud_only_options(fields, field):
    """The local backend's rules live in its check_spec (a valid spec, refused by the backend)."""
    with pytest.raises(ClusterSpecError) as info:
        LocalBackend().check_spec(parse_spec({"backend": "local", **fields}))
    assert info.value.field == field
    assert "local backend" in info.value.message and "\n" not in info.value.message


def test_vm_types_exclude_cpu_memory():
    with pytest.raises(ClusterSpecError) as info:
        parse_spec(backend="aws", worker_vm_types="m6i.large", worker_memory="8GiB")
    assert info.value.field == "worker_memory"


def test_values_are_normalised():
    spec = parse_spec(
        backend="aws", worker_vm_types="m6i.large, m5.large",
        idle_timeout="1h", no_client_timeout="off", allow_ingress_from="10.1.2.3/8",
    )
    assert spec.worker_vm_types == ["m6i.large", "m5.large"]
    assert parse_spec(worker_memory="16 GiB").worker_memory == 16 * 2**30
    assert spec.idle_timeout == 3600
    assert spec.no_client_timeout is None
    assert spec.allow_ingress_from == "10.0.0.0/8"


def test_defaults_come_from_dask_config():
    spec = parse_spec()
    assert spec.backend == "local" and spec.idle_timeout == 20 * 60 and spec.spot_policy == "on-demand"
    with dask.config.set({"coiled-lab.cluster.n-workers": 7, "coiled-lab.cluster.idle-timeout": "5m"}):
        spec = parse_spec()
    assert spec.n_workers == 7 and spec.idle_timeout == 300


def test_environment_variables_override_defaults(monkeypatch):
    monkeypatch.setenv("DASK_COILED_LAB__CLUSTER__N_WORKERS", "9")
    dask.config.refresh()
    try:
        assert parse_spec().n_workers == 9
    finally:
        monkeypatch.delenv("DASK_COILED_LAB__CLUSTER__N_WORKERS")
        dask.config.refresh()
    assert parse_spec().n_workers == 4


def test_cloud_only_defaults_do_not_break_local_clusters():
    with dask.config.set({"coiled-lab.cluster.spot-policy": "spot_with_fallback"}):
        assert parse_spec(backend="local").spot_policy == "spot_with_fallback"


def test_round_trip_through_json():
    spec = parse_spec(n_workers=3, tags={"team": "geo"}, idle_timeout="10m")
    again = ClusterSpec.model_validate(spec.public())
    assert again == spec
    assert set(spec.public()) == set(FIELDS)


@pytest.mark.parametrize("region", ["us-east-1", "eu-west-3", "us-gov-west-1", "europe-west4", "asia-northeast1"])
def test_region_names_of_both_clouds_are_accepted(region):
    assert parse_spec(backend="aws", region=region).region == region


@pytest.mark.parametrize("field, value", [("region", "1"), ("region", "US-EAST-1"), ("zone", "us-east-1;x"),
                                          ("region", "x")])
def test_bad_region_or_zone_names_the_field(field, value):
    with pytest.raises(ClusterSpecError) as info:
        parse_spec(backend="aws", **{field: value})
    assert info.value.field == field and "such as" in info.value.message


def test_a_stored_spec_is_revised_without_taking_defaults_for_choices():
    from coiled_lab.spec import revise

    # An admin's cloud default (spot) is ignored by a local cluster, also when it scales.
    with dask.config.set({"coiled-lab.cluster.spot-policy": "spot_with_fallback"}):
        stored = parse_spec(backend="local", n_workers=1).public()
    assert revise(stored, {"n_workers": 3}).n_workers == 3
    LocalBackend().check_spec(revise(stored, {"n_workers": 3}))
    software = parse_spec(backend="aws", software="requirements.txt", package_sync=False).public()
    assert revise({**software, "package_sync": True}).software == "requirements.txt"
    with pytest.raises(ClusterSpecError) as info:  # a change is still checked as a choice
        LocalBackend().check_spec(revise(stored, {"spot_policy": "spot"}))
    assert info.value.field == "spot_policy"
    with pytest.raises(ClusterSpecError):
        revise(stored, {"n_workers": -1})


# -- python_version ----------------------------------------------------------------------------
from coiled_lab.spec import SUPPORTED_PYTHONS, cluster_python, running_python  # noqa: E402


@pytest.mark.parametrize("value", ["3.9", "3.15", "2.7", "3.11.2", "3", "py3.11", "", "3.x", True, [], 3.1, 3])
def test_python_version_refused_names_the_field_and_lists_the_supported_ones(value):
    with pytest.raises(ClusterSpecError) as info:
        parse_spec(backend="aws", python_version=value)
    err = info.value
    assert err.field == "python_version" and err.message.startswith(f"python_version: {value!r} is not allowed: ")
    assert ", ".join(SUPPORTED_PYTHONS) in err.message
    if value == 3.1:  # what YAML and JSON make of 3.10
        assert "3.10 reads as 3.1" in err.message


def test_supported_pythons_are_what_dask_declares():
    """Each supported version satisfies the installed distributed's Requires-Python."""
    from importlib.metadata import metadata

    from packaging.specifiers import SpecifierSet

    requires = SpecifierSet(metadata("distributed")["Requires-Python"])
    assert all(f"{v}.0" in requires for v in SUPPORTED_PYTHONS)
    assert SUPPORTED_PYTHONS == tuple(sorted(SUPPORTED_PYTHONS, key=lambda v: tuple(map(int, v.split(".")))))


@pytest.mark.parametrize("value, expected", [("3.12", "3.12"), (" 3.10 ", "3.10"), (3.12, "3.12"), (None, None)])
def test_python_version_accepted(value, expected):
    assert parse_spec(backend="gcp", python_version=value).python_version == expected


def test_python_version_default_comes_from_config_and_none_means_this_environment(monkeypatch):
    assert parse_spec(backend="aws").python_version is None
    assert cluster_python(parse_spec(backend="aws")) == running_python()
    with dask.config.set({"coiled-lab.cluster.python-version": "3.12"}):
        assert parse_spec(backend="aws").python_version == "3.12"
    # An interpreter the VMs cannot run: left out, python_version is refused at launch.
    monkeypatch.setattr("coiled_lab.spec.running_python", lambda: "3.9")
    with pytest.raises(ClusterSpecError) as info:
        cluster_python(parse_spec(backend="aws"))
    assert info.value.field == "python_version" and "(3.9)" in info.value.message
    assert ", ".join(SUPPORTED_PYTHONS) in info.value.message
    assert cluster_python(parse_spec(backend="aws", python_version="3.12")) == "3.12"


def test_local_python_version_is_this_machines_or_none():
    here = running_python()
    assert parse_spec(backend="local", python_version=here).python_version == here
    assert parse_spec(backend="local").python_version is None
    other = next(v for v in SUPPORTED_PYTHONS if v != here)
    with pytest.raises(ClusterSpecError) as info:
        LocalBackend().check_spec(parse_spec(backend="local", python_version=other))
    assert info.value.field == "python_version"
    assert info.value.message == (f"python_version: {other!r} is not allowed: the local backend runs dask with "
                                  f"this server's own Python ({here}); allowed: '{here}', or leave it out")
    # A stored local spec (Python fixed at creation) is not re-judged against a newer interpreter.
    from coiled_lab.spec import revise

    stored = {**parse_spec(backend="local").public(), "python_version": other}
    assert revise(stored, {"n_workers": 2}).python_version == other
    LocalBackend().check_spec(revise(stored, {"n_workers": 2}))
