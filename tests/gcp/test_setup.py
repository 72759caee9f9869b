"""``coiled-lab setup gcp`` against the fake: what it makes, that a second run changes
nothing, and that the scheduler is never opened to the world unless asked."""

from __future__ import annotations

from coiled_lab import config
from coiled_lab.cli import main

from .conftest import REGION


def test_setup_is_idempotent_and_opens_the_scheduler_to_this_machine_only(network, fake, capsys, subnet_cidr):
    # The package's fixture ran setup once: everything exists.
    assert fake.networks["coiled-lab"]["autoCreateSubnetworks"] is False
    assert network["ipCidrRange"] == subnet_cidr and network["privateIpGoogleAccess"] is True
    internal = fake.firewalls["coiled-lab-internal"]
    assert internal["sourceTags"] == internal["targetTags"] == ["coiled-lab"]
    opened = [f for f in fake.firewalls.values() if f.get("sourceRanges")]
    me = config.get("cluster.allow-ingress-from")  # the server's address as the cloud sees it
    assert [f["sourceRanges"] for f in opened] == [[me]]
    assert opened[0]["allowed"] == [{"IPProtocol": "tcp", "ports": ["8786-8787"]}]
    assert not any("0.0.0.0/0" in f.get("sourceRanges", []) for f in fake.firewalls.values())
    email = "coiled-lab-vm@coiled-lab-test.iam.gserviceaccount.com"
    assert email in fake.service_accounts
    roles = {b["role"]: b["members"] for b in fake.policy["bindings"]}
    assert roles == {"roles/logging.logWriter": [f"serviceAccount:{email}"]}

    writes = ("compute.networks.insert", "compute.subnetworks.insert", "compute.firewalls.insert",
              "iam.serviceAccounts.create", "cloudresourcemanager.projects.setIamPolicy")
    before = {w: fake.count(w) for w in writes}
    capsys.readouterr()
    assert main(["setup", "gcp", "--region", REGION]) == 0
    out = capsys.readouterr().out
    assert "nothing to change: everything coiled-lab needs in us-central1 is in place" in out
    assert {w: fake.count(w) for w in writes} == before
    # The roles to grant are printed, for setup and for everyday use.
    assert "roles/resourcemanager.projectIamAdmin" in out and "roles/compute.instanceAdmin.v1" in out

    # A dry run for another region lists what it would make, and makes nothing.
    assert main(["setup", "gcp", "--region", "europe-west1", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "would create subnetwork coiled-lab" in out and "europe-west1" in out
    assert ("europe-west1", "coiled-lab") not in fake.subnetworks
    assert {w: fake.count(w) for w in writes} == before


def test_setup_without_credentials_says_what_to_do(gcp_env, monkeypatch, tmp_path, capsys):
    monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", str(tmp_path / "missing.json"))
    assert main(["setup", "gcp", "--region", REGION]) == 1
    assert "missing.json" in capsys.readouterr().err
