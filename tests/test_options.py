"""One parser for the CLI and the magic, generated from ClusterSpec: every field reachable."""

import pytest

from coiled_lab.options import UsageError, build_parser, spec_fields
from coiled_lab.spec import FIELDS, ClusterSpecError, parse_spec

EXAMPLES = {
    "name": (["--name", "etl"], "etl"),
    "backend": (["--backend", "aws"], "aws"),
    "n_workers": (["12"], 12),
    "worker_vm_types": (["--vm-type", "m6i.large,m5.large", "--vm-type", "c6i.large"],
                        ["m6i.large", "m5.large", "c6i.large"]),
    "worker_cpu": (["--cpu", "4"], 4),
    "worker_memory": (["--memory", "16GiB"], 16 * 2**30),
    "worker_gpu": (["--gpu", "1"], 1),
    "scheduler_vm_type": (["--scheduler-vm-type", "m6i.xlarge"], None),
    "spot_policy": (["--spot", "spot_with_fallback"], "spot_with_fallback"),
    "region": (["--region", "us-east-2"], "us-east-2"),
    "zone": (["--zone", "us-east-2b"], "us-east-2b"),
    "allow_cross_zone": (["--allow-cross-zone"], True),
    "allow_ingress_from": (["--allow-ingress-from", "198.51.100.7/32"], "198.51.100.7/32"),
    "connect_via": (["--connect-via", "private"], "private"),
    "idle_timeout": (["--idle-timeout", "45m"], 2700),
    "no_client_timeout": (["--no-client-timeout", "off"], None),
    "max_lifetime": (["--max-lifetime", "8h"], 8 * 3600),
    "tags": (["--tag", "team=geo", "--tag", "cost=42"], {"team": "geo", "cost": "42"}),
    "environ": (["--env", "OMP_NUM_THREADS=1"], {"OMP_NUM_THREADS": "1"}),
    "package_sync": (["--no-package-sync"], False),
    "software": (["--software", "env/requirements.txt"], "env/requirements.txt"),
    "python_version": (["--python-version", "3.12"], "3.12"),
    "scheduler_cpu": (["--scheduler-cpu", "4"], 4),
    "scheduler_memory": (["--scheduler-memory", "8GiB"], 8 * 2**30),
    "adaptive": (["--adaptive", "2,10", "5"], [2, 10]),
    "worker_options": (["--worker-options", "nthreads=2", "--worker-options", "memory_limit=2GiB"],
                       {"nthreads": 2, "memory_limit": 2 * 2**30}),
    "worker_class": (["--worker-class", "distributed.Worker"], "distributed.Worker"),
    "worker_disk_size": (["--worker-disk-size", "200"], 200),
    "use_best_zone": (["--no-use-best-zone"], False),
    "arm": (["--arm"], True),
    "allow_ssh_from": (["--allow-ssh-from", "203.0.113.7"], "203.0.113.7/32"),
    "package_sync_ignore": (["--package-sync-ignore", "polars,pyarrow"], ["polars", "pyarrow"]),
    "package_sync_only": (["--package-sync-only", "pandas"], ["pandas"]),
    "package_sync_strict": (["--package-sync-strict"], True),
    "package_sync_fail_on": (["--package-sync-fail-on", "warning-or-higher"], "warning-or-higher"),
}


def test_every_field_has_an_example():
    assert set(EXAMPLES) == set(FIELDS)


@pytest.mark.parametrize("cli", [True, False])
@pytest.mark.parametrize("field", FIELDS)
def test_every_field_is_reachable(cli, field):
    argv, expected = EXAMPLES[field]
    if field == "scheduler_vm_type":
        expected = "m6i.xlarge"
    backend = [] if field in ("backend",) else ["--backend", "aws"]
    if field in ("worker_cpu", "worker_memory"):
        backend = ["--backend", "gcp"]
    ns = build_parser("x", cli=cli).parse_args(["start", *backend, *argv])
    fields = spec_fields(ns)
    if field == "software":
        fields["package_sync"] = False
    spec = parse_spec(fields)
    assert getattr(spec, field) == expected


def test_python_alias_and_unsupported_version():
    ns = build_parser("x", cli=True).parse_args(["start", "--backend", "aws", "--python", "3.13"])
    assert parse_spec(spec_fields(ns)).python_version == "3.13"
    ns = build_parser("x", cli=True).parse_args(["start", "--backend", "aws", "--python-version", "3.9"])
    with pytest.raises(ClusterSpecError, match="Python 3.9 is not supported") as refused:
        parse_spec(spec_fields(ns))
    assert refused.value.field == "python_version"


def test_only_typed_options_are_sent():
    ns = build_parser("x", cli=True).parse_args(["start", "3"])
    assert spec_fields(ns) == {"n_workers": "3"}


def test_parse_errors_raise_instead_of_exiting():
    with pytest.raises(UsageError, match="unrecognized arguments: --frobnicate"):
        build_parser("x", cli=True).parse_args(["start", "--frobnicate"])
    with pytest.raises(UsageError, match="invalid choice: 'launch'"):
        build_parser("x", cli=False).parse_args(["launch"])
