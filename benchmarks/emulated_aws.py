"""AWS without a cloud, for benchmarks: a moto server behind the tests' fault proxy, the
local Price List endpoint, `coiled-lab setup aws` done once, and the EC2 emulator booting
every instance as a bare VM on an emulated network (the harness of tests/aws; root only).
This process is outside the VPC: it reaches schedulers at their public addresses, opened
to the network's egress address only.
"""

from __future__ import annotations

import logging
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

REGION = "us-east-1"


@dataclass
class EmulatedAWS:
    moto_url: str
    proxy: Any  # tests.aws.proxy.AWSProxy: every request, countable and faultable
    emulator: Any  # tests.aws.emulator.EC2Emulator
    control: Any  # an InProcessControl on a fresh state dir
    network: Any  # tests.vm.Network: the emulated network (downloads counted by its proxy)


@contextmanager
def emulated_aws(prefix: str, config: Optional[dict[str, Any]] = None, nice: int = 0) -> Iterator[EmulatedAWS]:
    from moto.server import ThreadedMotoServer

    from tests.aws import motofix
    from tests.aws.conftest import console_output
    from tests.aws.emulator import EC2Emulator
    from tests.aws.proxy import AWSProxy
    from tests.pricelist import PriceList
    from tests.vm import Network, rootfs

    logging.getLogger("werkzeug").setLevel(logging.WARNING)
    image = rootfs()  # built and cached on first use
    network = Network()
    motofix.apply(network.public_address)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    moto_url = f"http://{host}:{port}"
    proxy, prices = AWSProxy(moto_url).start(), PriceList()
    work = Path(tempfile.mkdtemp(prefix=prefix))
    os.environ.update(AWS_ENDPOINT_URL=proxy.url, AWS_ENDPOINT_URL_PRICING=prices.url, AWS_DEFAULT_REGION=REGION,
                      AWS_ACCESS_KEY_ID="AKIAFAKEFORBENCHMARK", AWS_SECRET_ACCESS_KEY="fake",
                      AWS_EC2_METADATA_DISABLED="true", DASK_COILED_LAB__STATE_DIR=str(work / "state"))
    import dask.config

    from coiled_lab.cli import main as cli
    from coiled_lab.control.inprocess import InProcessControl
    from coiled_lab.control.manager import ClusterManager

    dask.config.refresh()
    dask.config.set({"coiled-lab.address-echo": network.echo_url,
                     "coiled-lab.cluster.package-sync": False, **(config or {})})
    with open(os.devnull, "w") as quiet:
        stdout, sys.stdout = sys.stdout, quiet
        try:
            assert cli(["setup", "aws", "--region", REGION, "--vpc-cidr", f"10.{random.randint(200, 254)}.0.0/16"]) == 0
        finally:
            sys.stdout = stdout
    emulator = EC2Emulator(moto_url, REGION, network, image, work / "ec2", nice=nice).start()
    proxy.add(console_output(emulator))
    control = InProcessControl(ClusterManager(work / "state"))
    try:
        yield EmulatedAWS(moto_url, proxy, emulator, control, network)
    finally:
        control.close()
        emulator.close()
        network.close()
        proxy.close()
        prices.close()
        server.stop()
        shutil.rmtree(work, ignore_errors=True)
