"""GCP through the Jupyter server: without credentials a GCP request is a 503 saying what
to do, before anything is recorded; with a service account key an admin PUT, the GCP
backend calls Google (here the fake of tests/gcp) with that key's tokens."""

from __future__ import annotations

import base64
import json

import dask.config
import pytest

from ..gcp.conftest import service_account_key
from ..gcp.fakegcp import FakeGCP


@pytest.fixture
def fake(monkeypatch):
    server = FakeGCP()
    monkeypatch.setattr("google.oauth2.service_account.Credentials._is_regional_access_boundary_lookup_required",
                        lambda self: False)  # no lookup at iamcredentials.googleapis.com (see tests/gcp/conftest.py)
    with dask.config.set({f"coiled-lab.gcp.endpoints.{s}": server.url for s in ("compute", "logging")}):
        yield server
    server.close()


async def test_gcp_without_credentials_is_a_503_and_with_stored_ones_reaches_google(
        service, api, fake, monkeypatch, tmp_path):
    monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", str(tmp_path / "none.json"))
    monkeypatch.delenv("GOOGLE_CLOUD_PROJECT", raising=False)
    code, reply = await api("POST", "coiled-lab/api/clusters", body={"backend": "gcp", "n_workers": 1})
    assert code == 503 and "no usable GCP credentials" in reply["error"], reply
    assert "PUT a service account key" in reply["error"]
    code, reply = await api("GET", "coiled-lab/api/clusters")
    assert (code, reply) == (200, {"clusters": []}), reply  # nothing was recorded
    # The form's type list still answers, from the dated snapshot (no zones: only the API knows them).
    code, reply = await api("GET", "coiled-lab/api/catalog", params={"backend": "gcp", "region": "us-central1"})
    assert code == 200 and reply["offline"] and reply["regions"] == [{"name": "us-central1", "zones": []}], reply

    key = service_account_key(f"{fake.url}/token")
    code, status = await api("PUT", "coiled-lab/api/credentials",
                             body={"provider": "gcp", "service_account": json.dumps(key)})
    assert code == 200 and status["gcp"]["configured"] is True
    assert key["private_key"] not in json.dumps(status)
    code, catalog = await api("GET", "coiled-lab/api/catalog", params={"backend": "gcp", "region": "us-central1"})
    assert code == 200, catalog
    assert catalog["regions"] == [{"name": "us-central1", "zones": ["us-central1-a", "us-central1-b", "us-central1-c"]}]
    n2 = next(t for t in catalog["instance_types"] if t["name"] == "n2-standard-4")
    assert (n2["vcpu"], n2["memory"], n2["gpu"]) == (4, 16 * 2**30, 0)
    g2 = next(t for t in catalog["instance_types"] if t["name"] == "g2-standard-4")
    assert (g2["gpu"], g2["gpu_type"]) == (1, "nvidia-l4")
    # Signed with the stored key: Compute's client sends a JWT the key signed itself.
    (call,) = fake.calls("compute.machineTypes.aggregatedList")
    claims = json.loads(base64.urlsafe_b64decode(call.token.split(".")[1] + "=="))
    assert claims["iss"] == key["client_email"]
