"""``coiled-lab setup gcp`` against the fake: what it makes, that a second run changes
nothing, and that the scheduler is never opened to the world unless asked."""

from __future__ import annotations

import dask.config

from coiled_lab.cli import main

from .conftest import REGION
from .fakegcp import PROJECT

BUCKET = f"coiled-lab-envs-{PROJECT}"
WRITES = ("compute.networks.insert", "compute.subnetworks.insert", "compute.firewalls.insert",
          "iam.serviceAccounts.create", "cloudresourcemanager.projects.setIamPolicy", "storage.buckets.insert",
          "storage.buckets.patch", "storage.buckets.setIamPolicy", "iam.roles.create", "iam.roles.patch",
          "iam.roles.undelete")
SELF_DELETE = f"projects/{PROJECT}/roles/coiledLabVmSelfDelete"


def test_setup_is_idempotent_and_opens_the_scheduler_to_this_machine_only(network, fake, capsys, subnet_cidr,
                                                                          vm_network):
    # The package's fixture ran setup once: everything exists.
    assert fake.networks["coiled-lab"]["autoCreateSubnetworks"] is False
    assert network["ipCidrRange"] == subnet_cidr and network["privateIpGoogleAccess"] is True
    internal = fake.firewalls["coiled-lab-internal"]
    assert internal["sourceTags"] == internal["targetTags"] == ["coiled-lab"]
    opened = [f for f in fake.firewalls.values() if f.get("sourceRanges") and f["name"].startswith("coiled-lab-in-")]
    me = f"{vm_network.egress_address}/32"  # "me": this server as the emulated internet's echo sees it
    assert [f["sourceRanges"] for f in opened] == [[me]]
    # Any other rule open to the outside is a cluster's allow_ssh_from (an earlier test's): port 22 only.
    others = [f for f in fake.firewalls.values() if f.get("sourceRanges") and f not in opened]
    assert all(f["allowed"] == [{"IPProtocol": "tcp", "ports": ["22"]}] for f in others), others
    assert opened[0]["allowed"] == [{"IPProtocol": "tcp", "ports": ["8786-8787"]}]
    assert not any("0.0.0.0/0" in f.get("sourceRanges", []) for f in fake.firewalls.values())
    email = "coiled-lab-vm@coiled-lab-test.iam.gserviceaccount.com"
    assert email in fake.service_accounts
    roles = {b["role"]: b["members"] for b in fake.policy["bindings"]}
    assert roles == {"roles/logging.logWriter": [f"serviceAccount:{email}"]}
    # The role each VM gets on itself alone (never on the project): it may delete itself, nothing else.
    assert fake.roles[SELF_DELETE]["includedPermissions"] == ["compute.instances.delete"]
    # The bucket of built environments: private, expiring, in the region; the VMs read it
    # and write built environments only.
    bucket = fake.buckets[BUCKET]
    assert bucket["location"] == REGION.upper() and bucket["labels"] == {"coiled-lab": "managed"}
    assert bucket["iamConfiguration"] == {"uniformBucketLevelAccess": {"enabled": True},
                                          "publicAccessPrevention": "enforced"}
    assert bucket["lifecycle"] == {"rule": [{"action": {"type": "Delete"}, "condition": {"age": 30}}]}
    policy = fake.bucket_policies[BUCKET]
    mine = [b for b in policy["bindings"] if f"serviceAccount:{email}" in b["members"]]
    assert policy["version"] == 3 and mine == [
        {"role": "roles/storage.objectViewer", "members": [f"serviceAccount:{email}"]},
        {"role": "roles/storage.objectUser", "members": [f"serviceAccount:{email}"], "condition": {
            "title": "coiled-lab-envs-written", "description": "coiled-lab VMs write built environments, nothing else",
            "expression": f'resource.name.startsWith("projects/_/buckets/{BUCKET}/objects/envs/")'}}]
    # What the project's owners had on the new bucket is kept.
    assert {"role": "roles/storage.legacyBucketOwner", "members": [f"projectEditor:{PROJECT}",
                                                                   f"projectOwner:{PROJECT}"]} in policy["bindings"]

    writes = WRITES
    before = {w: fake.count(w) for w in writes}
    capsys.readouterr()
    assert main(["setup", "gcp", "--region", REGION]) == 0
    out = capsys.readouterr().out
    assert "nothing to change: everything coiled-lab needs in us-central1 is in place" in out
    assert {w: fake.count(w) for w in writes} == before
    # The roles to grant are printed, for setup and for everyday use.
    assert "roles/resourcemanager.projectIamAdmin" in out and "roles/compute.instanceAdmin.v1" in out
    assert "roles/iam.roleAdmin: create the custom role coiledLabVmSelfDelete" in out
    assert "roles/storage.admin" in out
    assert f"on bucket {BUCKET} only" in out
    assert "storage.buckets.get, storage.objects.get, storage.objects.create" in out

    # A dry run for another region lists what it would make, and makes nothing.
    assert main(["setup", "gcp", "--region", "europe-west1", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "would create subnetwork coiled-lab" in out and "europe-west1" in out
    assert ("europe-west1", "coiled-lab") not in fake.subnetworks
    assert {w: fake.count(w) for w in writes} == before


def test_setup_without_credentials_says_what_to_do(gcp_env, monkeypatch, tmp_path, capsys):
    monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", str(tmp_path / "missing.json"))
    assert main(["setup", "gcp", "--region", REGION]) == 3  # EXIT_CONFLICT: the cloud cannot be used yet
    assert "missing.json" in capsys.readouterr().err


def test_setup_puts_back_what_differs_on_the_bucket_and_keeps_the_rest(network, fake, capsys):
    email = "coiled-lab-vm@coiled-lab-test.iam.gserviceaccount.com"
    bucket, policy = fake.buckets[BUCKET], fake.bucket_policies[BUCKET]
    # Someone loosened the bucket, added a rule and a grant of their own, and removed ours.
    other_rule = {"action": {"type": "SetStorageClass", "storageClass": "NEARLINE"}, "condition": {"age": 7}}
    bucket["iamConfiguration"]["publicAccessPrevention"] = "inherited"
    bucket["lifecycle"]["rule"].append(other_rule)
    theirs = {"role": "roles/storage.objectViewer", "members": ["user:someone@example.com"]}
    policy["bindings"] = [b for b in policy["bindings"] if b["role"] != "roles/storage.objectUser"] + [theirs]
    capsys.readouterr()
    with dask.config.set({"coiled-lab.gcp.env-expire-days": 7}):
        assert main(["setup", "gcp", "--region", REGION, "--dry-run"]) == 0
        out = capsys.readouterr().out
        assert (f"would update storage bucket {BUCKET}: enforce public access prevention, delete objects 7 days "
                "old") in out and f"would let {email} read bucket {BUCKET}" in out
        assert main(["setup", "gcp", "--region", REGION]) == 0
    assert bucket["iamConfiguration"]["publicAccessPrevention"] == "enforced"
    assert bucket["lifecycle"]["rule"] == [other_rule, {"action": {"type": "Delete"}, "condition": {"age": 7}}]
    policy = fake.bucket_policies[BUCKET]
    assert theirs in policy["bindings"]
    assert [b["role"] for b in policy["bindings"] if f"serviceAccount:{email}" in b["members"]] == [
        "roles/storage.objectViewer", "roles/storage.objectUser"]
    # Back to the default: one change, the rule's days; then nothing.
    capsys.readouterr()
    assert main(["setup", "gcp", "--region", REGION]) == 0
    assert "update storage bucket" in capsys.readouterr().out
    before = {w: fake.count(w) for w in WRITES}
    assert main(["setup", "gcp", "--region", REGION]) == 0
    assert "nothing to change" in capsys.readouterr().out and {w: fake.count(w) for w in WRITES} == before
    bucket["lifecycle"]["rule"].remove(other_rule)
    policy["bindings"].remove(theirs)


def test_setup_without_a_bucket_when_turned_off(network, fake, capsys):
    with dask.config.set({"coiled-lab.gcp.env-bucket": False}):
        assert main(["setup", "gcp", "--region", REGION, "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "bucket" not in out and "storage.objects" not in out


def test_setup_puts_back_the_self_delete_role_deleted_or_changed(network, fake, capsys):
    role = fake.roles[SELF_DELETE]
    role.update(deleted=True, includedPermissions=["compute.instances.delete", "compute.instances.setMetadata"])
    try:
        assert main(["setup", "gcp", "--region", REGION]) == 0
        out = capsys.readouterr().out
        assert "undelete custom role coiledLabVmSelfDelete" in out
        assert "set the permissions of custom role coiledLabVmSelfDelete to compute.instances.delete" in out
        assert not role.get("deleted") and role["includedPermissions"] == ["compute.instances.delete"]
    finally:
        role.pop("deleted", None)
        role["includedPermissions"] = ["compute.instances.delete"]
