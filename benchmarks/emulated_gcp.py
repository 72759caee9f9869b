"""Google Cloud without a cloud, for benchmarks: the tests' fake REST server (with a service
account key whose tokens it issues), `coiled-lab setup gcp` done once, and the GCE emulator
booting every VM as a bare VM on an emulated network (the harness of tests/gcp; root only).
As in emulated_aws.py, this process reaches schedulers at their external addresses.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import sys
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Optional

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

REGION = "us-central1"


@dataclass
class EmulatedGCP:
    fake: Any  # tests.gcp.fakegcp.FakeGCP
    emulator: Any  # tests.gcp.emulator.GCEEmulator
    control: Any  # an InProcessControl on a fresh state dir
    network: Any  # tests.vm.Network


def use_fake(fake: Any, work: Path) -> None:
    """This process's Google credentials: a service account key whose tokens ``fake`` issues
    (ADC), Cloud Storage at ``fake`` (``STORAGE_EMULATOR_HOST``: `setup gcp` makes the
    environment bucket), a state dir under ``work``; as in the tests, no background lookup
    at iamcredentials.googleapis.com, which no endpoint setting reaches."""
    import google.oauth2.service_account

    from tests.gcp.conftest import service_account_key

    key = work / "key.json"
    key.write_text(json.dumps(service_account_key(f"{fake.url}/token")))
    os.environ.update(GOOGLE_APPLICATION_CREDENTIALS=str(key), NO_GCE_CHECK="True", STORAGE_EMULATOR_HOST=fake.url,
                      DASK_COILED_LAB__STATE_DIR=str(work / "state"))
    google.oauth2.service_account.Credentials._is_regional_access_boundary_lookup_required = lambda self: False


@contextmanager
def emulated_gcp(prefix: str, config: Optional[dict[str, Any]] = None) -> Iterator[EmulatedGCP]:
    import dask.config

    from tests.gcp.conftest import TEST_CONFIG
    from tests.gcp.emulator import GCEEmulator
    from tests.gcp.fakegcp import FakeGCP
    from tests.vm import Network, rootfs

    image = rootfs()
    network = Network()
    fake = FakeGCP()
    work = Path(tempfile.mkdtemp(prefix=prefix))
    use_fake(fake, work)
    dask.config.refresh()
    dask.config.set({**TEST_CONFIG,
                     "coiled-lab.gcp.subnet-cidr": f"10.{random.randint(200, 254)}.{16 * random.randint(0, 15)}.0/20",
                     "coiled-lab.address-echo": network.echo_url,
                     **{f"coiled-lab.gcp.endpoints.{s}": fake.url for s in ("compute", "logging", "iam", "resourcemanager")},
                     **(config or {})})
    from coiled_lab.cli import main as cli
    from coiled_lab.control.inprocess import InProcessControl
    from coiled_lab.control.manager import ClusterManager

    with open(os.devnull, "w") as quiet:
        stdout, sys.stdout = sys.stdout, quiet
        try:
            assert cli(["setup", "gcp", "--region", REGION]) == 0
        finally:
            sys.stdout = stdout
    emulator = GCEEmulator(fake, network, image, work / "gce").start()
    control = InProcessControl(ClusterManager(work / "state"))
    try:
        yield EmulatedGCP(fake, emulator, control, network)
    finally:
        control.close()
        emulator.close()
        network.close()
        fake.close()
        shutil.rmtree(work, ignore_errors=True)
