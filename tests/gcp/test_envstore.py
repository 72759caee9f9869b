"""The bucket of built environments on GCP, against the fake's Cloud Storage: the server's
side (:class:`~coiled_lab.backends.gcp.envstore.GCSStore`, found and used by the backend)
and the VMs' (:func:`coiled_lab.bootstrap.envcache.gcs` with a VM's token), each allowed
only what ``setup gcp`` granted."""

from __future__ import annotations

import asyncio
import copy
import io
import json
import tarfile
import urllib.error

import dask.config
import google.oauth2.credentials
import pytest

from coiled_lab.backends.base import ClusterContext
from coiled_lab.backends.envstore import ARCHIVE, INPUTS
from coiled_lab.backends.gcp import GCPBackend, envstore
from coiled_lab.backends.gcp.instances import COMPUTE_SCOPE, LOG_SCOPE, STORAGE_SCOPE
from coiled_lab.backends.gcp.session import GCPError, GCPSession
from coiled_lab.backends.gcp.setup import BUCKET_EVERYDAY_ROLES
from coiled_lab.bootstrap import envcache
from coiled_lab.environment import Environment, Package
from coiled_lab.spec import ClusterSpecError, parse_spec
from coiled_lab.tls import TLSMaterial

from .conftest import labelled
from .fakegcp import PROJECT, STORAGE_ROLES
from .test_backend import startup_archive

BUCKET = f"coiled-lab-envs-{PROJECT}"
VM_ACCOUNT = f"coiled-lab-vm@{PROJECT}.iam.gserviceaccount.com"
CLOUD_PLATFORM = "https://www.googleapis.com/auth/cloud-platform"


def environment(**fields) -> Environment:
    return Environment(where="the tests", python="3.11", platform="linux-x86_64",
                       packages=[Package("toolz", "0.12.1", "index")], **fields)


def test_the_store_puts_once_and_never_replaces(network, fake):
    assert envstore.bucket_name(GCPSession()) == BUCKET
    store = asyncio.run(envstore.find(GCPSession()))
    assert store is not None and store.bucket == BUCKET and store.vm_store() == {"kind": "gcs", "bucket": BUCKET}
    key = "inputs/test-store.tar"
    assert asyncio.run(store.exists(key)) is False
    asyncio.run(store.put(key, b"first"))
    assert asyncio.run(store.exists(key)) is True
    assert fake.objects[BUCKET][key][1] == b"first"
    generation = fake.objects[BUCKET][key][0]["generation"]
    # Another server put it a moment ago: the same key is the same content, left as it is.
    asyncio.run(envstore.GCSStore(GCPSession(), BUCKET).put(key, b"second"))
    assert fake.objects[BUCKET][key][0]["generation"] == generation and fake.objects[BUCKET][key][1] == b"first"
    uploads = [c for c in fake.calls("storage.objects.insert") if c.query.get("name") == key]
    assert len(uploads) == 2 and all(c.query["ifGenerationMatch"] == "0" and c.query["uploadType"] == "media"
                                     for c in uploads)
    # ensure() asks once per key and process.
    asked = fake.count("storage.objects.get")
    asyncio.run(store.ensure(key, lambda: pytest.fail("put again")))
    asyncio.run(store.ensure(key, lambda: pytest.fail("put again")))
    assert fake.count("storage.objects.get") == asked + 1
    del fake.objects[BUCKET][key]


def test_no_bucket_when_turned_off_missing_or_another_projects(network, fake):
    gcp = GCPSession()
    with dask.config.set({"coiled-lab.gcp.env-bucket": False}):
        assert asyncio.run(envstore.find(gcp)) is None
    with dask.config.set({"coiled-lab.gcp.env-bucket": "coiled-lab-no-such-bucket"}):
        assert asyncio.run(envstore.find(gcp)) is None
    # Bucket names are global: a bucket of the default name that another project made
    # (and lets anyone read) is not used, and setup says what to do.
    ours = fake.buckets.pop(BUCKET), fake.bucket_policies[BUCKET], fake.objects[BUCKET]
    try:
        fake.add_bucket(BUCKET, project_number="999999", readable=True)
        told: list[str] = []
        assert asyncio.run(envstore.find(gcp, told.append)) is None
        assert "belongs to another project" in told[0]
        with pytest.raises(GCPError, match="exists in another project.*coiled-lab.gcp.env-bucket"):
            from coiled_lab.backends.gcp.setup import plan

            asyncio.run(plan(gcp, "us-central1"))
        # ...unless the admin named it: a team may share a bucket across projects.
        with dask.config.set({"coiled-lab.gcp.env-bucket": BUCKET}):
            assert asyncio.run(envstore.find(gcp)) is not None
        # One that refuses these credentials: the VMs install from the index, and why is told.
        fake.add_bucket(BUCKET, project_number="999999", readable=False)
        told.clear()
        assert asyncio.run(envstore.find(gcp, told.append)) is None
        assert "refused these credentials" in told[0]
    finally:
        fake.buckets[BUCKET], fake.bucket_policies[BUCKET], fake.objects[BUCKET] = ours


def test_a_vm_reads_the_bucket_and_writes_built_environments_only(network, fake, tmp_path):
    fake.accept_token("vm-test-token", VM_ACCOUNT, [LOG_SCOPE, STORAGE_SCOPE])
    asyncio.run(envstore.GCSStore(GCPSession(), BUCKET).put("inputs/vm-test.tar", b"inputs"))
    bucket = envcache.gcs(BUCKET, lambda: "vm-test-token")  # STORAGE_EMULATOR_HOST: the fake
    archive = tmp_path / "archive.tar.gz"
    try:
        with bucket.get("inputs/vm-test.tar") as response:
            assert response.read() == b"inputs"
        assert bucket.get("envs/vm-test.tar.gz") is None
        archive.write_bytes(b"archive")
        bucket.put("envs/vm-test.tar.gz", archive)
        bucket.put("envs/vm-test.tar.gz", archive)  # a damaged archive is replaced
        with bucket.get("envs/vm-test.tar.gz") as response:
            assert response.read() == b"archive"
        # What the server alone writes, the VMs may not.
        with pytest.raises(urllib.error.HTTPError) as refused:
            bucket.put("inputs/vm-test.tar", archive)
        assert refused.value.code == 403
        assert fake.storage_refused[-1] == (VM_ACCOUNT, "storage.objects.create",
                                            f"projects/_/buckets/{BUCKET}/objects/inputs/vm-test.tar")
        # A token without the storage scope, or no VM's at all, reads nothing. On GCS a 403
        # is a permission missing, not an absent object: it is raised, so the VM's log says
        # it (and the VM installs instead).
        fake.accept_token("vm-logs-only", VM_ACCOUNT, [LOG_SCOPE])
        with pytest.raises(urllib.error.HTTPError) as refused:
            envcache.gcs(BUCKET, lambda: "vm-logs-only").get("inputs/vm-test.tar")
        assert refused.value.code == 403
        assert fake.storage_refused[-1][:2] == (VM_ACCOUNT, "storage.objects.get")
        with pytest.raises(urllib.error.HTTPError) as refused:
            envcache.gcs(BUCKET, lambda: "not-a-token").get("inputs/vm-test.tar")
        assert refused.value.code == 401
    finally:
        for key in ("inputs/vm-test.tar", "envs/vm-test.tar.gz"):
            fake.objects[BUCKET].pop(key, None)


@pytest.mark.parametrize("dropped", [None, *BUCKET_EVERYDAY_ROLES])
def test_the_printed_everyday_bucket_roles_are_enough_and_each_is_needed(network, fake, dropped):
    """The bucket roles `setup gcp` prints for everyday use, granted on the bucket to an
    account holding nothing else (as an admin grants them): with all of them the server's
    side finds the bucket, sees what is there and puts inputs; without any one of them
    the fake refuses a permission that role grants."""
    account, token = f"everyday@{PROJECT}.iam.gserviceaccount.com", f"everyday-{dropped}"
    fake.accept_token(token, account, [CLOUD_PLATFORM])
    saved = copy.deepcopy(fake.bucket_policies[BUCKET])
    fake.bucket_policies[BUCKET]["bindings"] += [{"role": role, "members": [f"serviceAccount:{account}"]}
                                                 for role in BUCKET_EVERYDAY_ROLES if role != dropped]
    key, seen = f"inputs/everyday-{dropped}.tar", len(fake.storage_refused)
    gcp = GCPSession(google.oauth2.credentials.Credentials(token, quota_project_id=PROJECT))
    try:
        # The bucket named in config: found without asking Compute whose it is (the project
        # roles are not what this test is about).
        with dask.config.set({"coiled-lab.gcp.env-bucket": BUCKET}):
            store = asyncio.run(envstore.find(gcp, lambda why: None))
        assert store is not None, "the bucket was not found"
        asyncio.run(store.ensure(key, lambda: b"inputs"))  # asks whether it is there, then puts it
        asyncio.run(store.put(key, b"inputs"))  # there already (another server's): left as it is
        assert fake.objects[BUCKET][key][1] == b"inputs"
    except (AssertionError, GCPError):
        assert dropped is not None
    finally:
        fake.bucket_policies[BUCKET] = saved
        fake.objects[BUCKET].pop(key, None)
    refused = [permission for who, permission, _ in fake.storage_refused[seen:] if who == account]
    if dropped is None:
        assert refused == []
    else:
        assert refused and set(refused) <= set(STORAGE_ROLES[dropped])


def test_a_syncing_cluster_puts_its_inputs_and_its_vms_get_the_bucket(network, fake, state_dir):
    backend = GCPBackend()
    env = environment(wheels={}, files=None)
    directory = state_dir / "clusters" / "e0a000000001"
    directory.mkdir(parents=True)
    told: list[tuple] = []
    ctx = ClusterContext(id="e0a000000001", name="t-env", spec=parse_spec({"backend": "gcp", "n_workers": 1}),
                         tls=TLSMaterial.generate("e0a000000001"), directory=directory, environment=env,
                         notify=lambda kind, message, level="warning": told.append((kind, message, level)))
    archive = ARCHIVE.format(hash=env.hash)
    assert asyncio.run(backend.environment_built(env.hash)) is False
    try:
        ctx.state = asyncio.run(backend.ensure_network(ctx))
        assert ctx.state["env_bucket"] == BUCKET
        asyncio.run(backend.describe(ctx))
        asyncio.run(backend.launch_scheduler(ctx))
        (scheduler,) = labelled(fake, ctx.id, "scheduler", alive=False)
        # Its token may reach Cloud Storage (the bucket's policy says what it may do there).
        assert scheduler["serviceAccounts"] == [{"email": VM_ACCOUNT,
                                                 "scopes": [LOG_SCOPE, COMPUTE_SCOPE, STORAGE_SCOPE]}]
        config = json.loads(startup_archive(scheduler["metadata"]["items"][0]["value"])["config.json"])
        assert config["packages"] == []  # the pins travel in the inputs
        assert config["env"] == {"hash": env.hash, "store": {"kind": "gcs", "bucket": BUCKET},
                                 "inputs": INPUTS.format(hash=env.hash), "archive": archive, "built": False,
                                 "build": True, "wait": config["env"]["wait"]}
        [(kind, message, level)] = told  # where the software comes from, and that it is being built
        assert kind == "software" and level == "info" and "building it once" in message
        with tarfile.open(fileobj=io.BytesIO(fake.objects[BUCKET][INPUTS.format(hash=env.hash)][1])) as tar:
            assert tar.extractfile("pins.txt").read() == b"toolz==0.12.1\n"
        # Once a scheduler uploaded the archive, it is built.
        asyncio.run(envstore.GCSStore(backend.gcp, BUCKET).put(archive, b"built"))
        assert asyncio.run(backend.environment_built(env.hash)) is True
        with dask.config.set({"coiled-lab.gcp.env-bucket": False}):
            assert asyncio.run(backend.environment_built(env.hash)) is None
    finally:
        asyncio.run(backend.cleanup(ctx))
        for key in (archive, INPUTS.format(hash=env.hash)):
            fake.objects[BUCKET].pop(key, None)


def test_without_a_bucket_the_vms_get_the_pins_and_local_code_is_refused(network, fake, state_dir):
    backend = GCPBackend()
    directory = state_dir / "clusters" / "e0a000000002"
    directory.mkdir(parents=True)
    ctx = ClusterContext(id="e0a000000002", name="t-env2", spec=parse_spec({"backend": "gcp", "n_workers": 1}),
                         tls=TLSMaterial.generate("e0a000000002"), directory=directory,
                         environment=environment(files=b"code"))
    with dask.config.set({"coiled-lab.gcp.env-bucket": False}):
        ctx.state = asyncio.run(backend.ensure_network(ctx))
    assert ctx.state["env_bucket"] is None
    with pytest.raises(ClusterSpecError, match="cannot reach the VMs without coiled-lab's environment bucket.*gcp"):
        asyncio.run(backend._software(ctx, "scheduler"))
    ctx.environment = environment()
    software = asyncio.run(backend._software(ctx, "worker"))
    assert software["packages"] == ["toolz==0.12.1"] and "env" not in software
