"""``GET /coiled-lab/api/schema?backend=``: ClusterSpec's JSON schema with this server's
defaults and limits and the forms' UI table, from a real Jupyter server."""

from __future__ import annotations

import dask.config
import psutil

from coiled_lab.schema import FORM, NOT_IN_THE_FORMS
from coiled_lab.spec import FIELDS


async def test_schema_carries_the_servers_defaults_limits_and_ui(service, api):
    overrides = {
        "coiled-lab.cluster.n-workers": 3,
        "coiled-lab.cluster.idle-timeout": "45 minutes",
        "coiled-lab.cluster.tags": {"team": "geo"},
        "coiled-lab.local.max-workers": 12,
        "coiled-lab.limits.allowed-regions": ["eu-west-1"],
    }
    with dask.config.set(overrides):
        code, local = await api("GET", "coiled-lab/api/schema")  # the server's default backend: local
        code_aws, aws = await api("GET", "coiled-lab/api/schema", params={"backend": "aws"})
    assert code == code_aws == 200
    props = local["properties"]
    assert set(props) == set(FIELDS)
    assert local["x-backend"] == "local" and aws["x-backend"] == "aws"
    # The server's dask config, as written there.
    assert props["n_workers"]["default"] == 3
    assert props["idle_timeout"]["default"] == "45 minutes"
    assert props["tags"]["default"] == {"team": "geo"}
    # Bounds and choices: ClusterSpec's, then the admin's, naming the setting that sets them.
    assert props["n_workers"]["minimum"] == 0
    assert props["n_workers"]["maximum"] == 12 and props["n_workers"]["x-limit"] == "coiled-lab.local.max-workers"
    assert aws["properties"]["n_workers"]["maximum"] == 10_000 and "x-limit" not in aws["properties"]["n_workers"]
    assert props["worker_cpu"]["minimum"] == 1  # hoisted from the optional field's non-null branch
    assert props["backend"]["enum"] == ["local", "aws", "gcp"]
    assert aws["properties"]["spot_policy"]["enum"] == ["on-demand", "spot", "spot_with_fallback"]
    assert aws["properties"]["region"]["enum"] == ["eu-west-1"]
    assert "enum" not in props["region"]  # no regions on local
    # The UI table: labels and order, the fields each backend shows, why the others are not shown.
    assert props["n_workers"]["title"] == "Workers" and props["n_workers"]["x-ui"]["group"] == "basic"
    assert [props[name]["x-ui"]["order"] for name in FORM] == list(range(len(FORM)))
    cloud_only = {"region", "zone", "worker_vm_types", "worker_gpu", "spot_policy", "allow_ingress_from"}
    assert local["x-form"] == [name for name, ui in FORM.items() if "local" in ui.backends]
    assert cloud_only.isdisjoint(local["x-form"]) and {"name", "n_workers", "idle_timeout"} <= set(local["x-form"])
    assert aws["x-form"] == list(FORM)
    assert local["x-not-in-forms"] == NOT_IN_THE_FORMS
    for name in NOT_IN_THE_FORMS:
        assert "x-ui" not in props[name]
    # This machine, for the local form's warnings; a cloud's workers are VMs of their own.
    assert local["x-machine"] == {"cpu": psutil.cpu_count(), "memory": psutil.virtual_memory().total}
    assert "x-machine" not in aws


async def test_schema_follows_a_limit_changed_while_the_server_runs(service, api):
    code, before = await api("GET", "coiled-lab/api/schema", params={"backend": "gcp"})
    with dask.config.set({"coiled-lab.limits.max-workers": 20}):
        code, after = await api("GET", "coiled-lab/api/schema", params={"backend": "gcp"})
    assert before["properties"]["n_workers"]["maximum"] == 10_000
    assert after["properties"]["n_workers"]["maximum"] == 20
    assert after["properties"]["n_workers"]["x-limit"] == "coiled-lab.limits.max-workers"


async def test_unknown_backend_is_one_line_naming_the_field(service, api):
    code, body = await api("GET", "coiled-lab/api/schema", params={"backend": "azure"})
    assert code == 400
    assert body["field"] == "backend"
    assert body["error"] == "backend: 'azure' is not allowed; allowed: local, aws, gcp"


async def test_schema_needs_credentials(service, api):
    code, _ = await api("GET", "coiled-lab/api/schema", headers={"Authorization": ""})
    assert code in (401, 403)
    code, _ = await api("GET", "coiled-lab/api/schema", headers={"Authorization": f"coiled-lab {service.token}"})
    assert code == 200
