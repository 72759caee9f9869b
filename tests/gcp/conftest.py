"""Google Cloud without a cloud: the fake REST server (:mod:`.fakegcp`) and the GCE emulator
(:mod:`.emulator`) that boots its VMs as bare VMs on the session's emulated network.

The google clients find credentials the standard way, through Application Default
Credentials: ``GOOGLE_APPLICATION_CREDENTIALS`` names a service account key (a real RSA
key made here) whose token endpoint is the fake's, so every client gets an access token
over HTTP and sends it, as in production. Endpoints and test config are set for the whole
package (and subprocesses) and restored afterwards. ``coiled-lab setup gcp`` prepares the
network once, with a subnetwork ``10.<n>.<m>.0/20`` (random, so that packages and
concurrent runs do not share addresses). As in tests/aws, this server is outside the
network: it reaches schedulers at their external addresses, opened to the emulated
network's egress address only, and VMs install dask and distributed without package sync.
"""

from __future__ import annotations

import json
import random
from typing import Any

import dask.config
import pytest

from ..vm.fixtures import bare_rootfs, vm_network  # noqa: F401 - fixtures
from .emulator import GCEEmulator
from .fakegcp import PROJECT, FakeGCP

REGION = "us-central1"
TEST_CONFIG: dict[str, Any] = {
    "coiled-lab.gcp.nanny": False,
    "coiled-lab.gcp.death-timeout": 15,
    "coiled-lab.gcp.start-timeout": 90,
    "coiled-lab.gcp.poll-interval": 0.5,
    "coiled-lab.gcp.spot-poll-interval": 0.5,
    "coiled-lab.gcp.region": REGION,
    "coiled-lab.gcp.retry-timeout": 20,
    "coiled-lab.cluster.package-sync": False,
}


def _env_name(key: str) -> str:
    return "DASK_" + key.upper().replace(".", "__").replace("-", "_")


def service_account_key(token_uri: str, project: str = PROJECT) -> dict[str, Any]:
    """A service account key file's contents, with a fresh RSA key, getting tokens at ``token_uri``."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption()).decode()
    return {"type": "service_account", "project_id": project, "private_key_id": "0123456789abcdef",
            "private_key": pem, "client_email": f"admin@{project}.iam.gserviceaccount.com",
            "client_id": "100000000000000000001", "token_uri": token_uri}


@pytest.fixture(scope="package")
def fake():
    server = FakeGCP()
    yield server
    server.close()


@pytest.fixture(scope="package")
def subnet_cidr() -> str:
    return f"10.{random.randint(200, 254)}.{16 * random.randint(0, 15)}.0/20"


@pytest.fixture(scope="package")
def gcp_env(fake, tmp_path_factory, subnet_cidr, vm_network):
    """ADC pointing at the fake, the fake's endpoints and test config, for this package only."""
    key_file = tmp_path_factory.mktemp("gcp-key") / "key.json"
    key_file.write_text(json.dumps(service_account_key(f"{fake.url}/token")))
    key_file.chmod(0o600)
    config = {**TEST_CONFIG, "coiled-lab.gcp.subnet-cidr": subnet_cidr,
              "coiled-lab.address-echo": vm_network.echo_url,
              **{f"coiled-lab.gcp.endpoints.{s}": fake.url for s in ("compute", "logging", "iam", "resourcemanager")}}
    with pytest.MonkeyPatch.context() as mp:
        for key in ("GOOGLE_CLOUD_PROJECT", "CLOUDSDK_CORE_PROJECT", "GCE_METADATA_HOST"):
            mp.delenv(key, raising=False)
        mp.setenv("GOOGLE_APPLICATION_CREDENTIALS", str(key_file))
        # Cloud Storage (the environment bucket) is found as Google's libraries find an
        # emulator: no coiled-lab.gcp.endpoints.storage here.
        mp.setenv("STORAGE_EMULATOR_HOST", fake.url)
        mp.setenv("NO_GCE_CHECK", "True")  # this machine is no GCE VM: google-auth must not ask
        # google-auth looks up a service account's "regional access boundary" at
        # iamcredentials.googleapis.com in the background; no endpoint setting reaches it,
        # and it changes nothing coiled-lab does: off, so no test reaches for the internet.
        mp.setattr("google.oauth2.service_account.Credentials._is_regional_access_boundary_lookup_required",
                   lambda self: False)
        for key, value in config.items():
            mp.setenv(_env_name(key), str(value))
        with dask.config.set(config):
            yield key_file


@pytest.fixture(scope="package")
def network(gcp_env, fake) -> dict[str, Any]:
    """``coiled-lab setup gcp`` run once."""
    from coiled_lab.cli import main

    assert main(["setup", "gcp", "--region", REGION]) == 0
    return fake.subnetworks[(REGION, "coiled-lab")]


@pytest.fixture(scope="package")
def emulator(fake, network, vm_network, bare_rootfs, tmp_path_factory):
    emulator = GCEEmulator(fake, vm_network, bare_rootfs, tmp_path_factory.mktemp("gce")).start()
    yield emulator
    emulator.close()


@pytest.fixture(autouse=True)
def _no_faults_left(request):
    """Faults a test injected end with the test."""
    yield
    if "fake" in request.fixturenames:
        request.getfixturevalue("fake").reset()
    if "emulator" in request.fixturenames:
        request.getfixturevalue("emulator").broken_roles.clear()


@pytest.fixture
def gcp_control(state_dir, emulator):
    """An in-process control plane on the test's state dir, launching into the emulator."""
    from coiled_lab.control.inprocess import InProcessControl
    from coiled_lab.control.manager import ClusterManager

    control = InProcessControl(ClusterManager(state_dir))
    yield control
    control.close()


def labelled(fake: FakeGCP, cluster_id: str, role: str | None = None, alive: bool = True) -> list[dict]:
    """The fake's VMs of a cluster (running ones only, unless ``alive`` is False)."""
    vms = fake.labelled("coiled-lab-cluster", cluster_id)
    return [v for v in vms if (not alive or v["status"] == "RUNNING")
            and (role is None or v["labels"].get("coiled-lab-role") == role)]
