"""Browser tests against "AWS": the harness of tests/aws (moto behind the fault proxy, the
Price List endpoint, `setup aws` on a loopback VPC, the EC2 emulator), shared rather than
copied. The ``jupyter lab`` started here inherits its environment (the proxy's endpoint,
fake keys, the test config) plus admin limits, so the form meets real 4xx answers."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Iterator

import pytest

from ...aws.conftest import (  # noqa: F401 - fixtures
    REGION, _no_faults_left, aws_env, bare_rootfs, emulator, moto, moto_url, price_list, proxy, vm_network, vpc_cidr,
)
from ..conftest import ARTIFACTS
from ..lab import JupyterLab, installed_labextension

MAX_WORKERS = 6
ALLOWED_TYPES = '["m6i.*", "m5.*"]'


@pytest.fixture(scope="package")
def network(aws_env, vpc_cidr) -> None:
    """``coiled-lab setup aws`` on the loopback VPC, run as an admin would: in its own
    process (Playwright's sync API holds an event loop in this thread, so the CLI's own
    ``asyncio.run`` cannot run here)."""
    subprocess.run([sys.executable, "-m", "coiled_lab.cli", "setup", "aws", "--region", REGION,
                    "--vpc-cidr", vpc_cidr], check=True, capture_output=True, timeout=120)


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory, emulator) -> Iterator[JupyterLab]:
    """A lab whose server launches into the EC2 emulator, with an admin's limits."""
    if installed_labextension() is None:
        pytest.fail("the coiled-lab lab extension is not installed; build it with `pip install -e .`")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("DASK_COILED_LAB__LIMITS__MAX_WORKERS", str(MAX_WORKERS))
        mp.setenv("DASK_COILED_LAB__LIMITS__ALLOWED_INSTANCE_TYPES", ALLOWED_TYPES)
        server = JupyterLab(tmp_path_factory.mktemp("lab-aws"))
        server.start()
    yield server
    server.close()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """Keep each phase's report on the test item, for :func:`screenshot_on_failure`."""
    outcome = yield
    report = outcome.get_result()
    setattr(item, f"report_{report.when}", report)


@pytest.fixture(autouse=True)
def screenshot_on_failure(request, page) -> Iterator[None]:
    """A failed test leaves the page as it was: test-artifacts/failed-<test>.png (taken
    before the page closes: this fixture depends on it)."""
    yield
    report = getattr(request.node, "report_call", None)
    if report is not None and report.failed:
        ARTIFACTS.mkdir(exist_ok=True)
        path: Path = ARTIFACTS / f"failed-{request.node.name}.png"
        try:
            page.screenshot(path=path, full_page=True)
        except Exception as exc:  # noqa: BLE001 - a closed page: the failure itself is what counts
            print(f"no screenshot of the failure: {exc}")
