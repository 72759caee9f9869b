"""Shared fixtures: every test gets its own coiled-lab state directory, and no dask
process a test started survives it."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import dask.config
import psutil
import pytest

# botocore looks for an instance role at 169.254.169.254 when it finds no credentials:
# this machine is no EC2 instance, and tests send nothing beyond loopback.
os.environ["AWS_EC2_METADATA_DISABLED"] = "true"

# Register coiled-lab's config defaults before any test enters a dask.config.set()
# block: defaults registered inside one would be undone when it exits.
import coiled_lab.config  # noqa: F401

from .postgres import pg_url, postgres, store_at, store_on_postgres  # noqa: F401,E402  (tests/postgres.py)


def cluster_processes(marker: str | os.PathLike) -> list[psutil.Process]:
    """Live (non-zombie) processes whose command line mentions ``marker`` (a state dir)."""
    marker = str(marker)
    found = []
    for proc in psutil.process_iter(["cmdline", "status"]):
        try:
            if proc.info["status"] != psutil.STATUS_ZOMBIE and any(marker in a for a in proc.info["cmdline"] or ()):
                found.append(proc)
        except psutil.Error:
            continue
    return [p for p in found if p.pid != os.getpid()]


def wait_for(predicate, timeout: float = 30, interval: float = 0.1, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


@pytest.fixture
def state_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """A fresh state dir for this process (dask config) and its children (environment)."""
    path = tmp_path / "state"
    monkeypatch.setenv("DASK_COILED_LAB__STATE_DIR", str(path))
    monkeypatch.setenv("DASK_COILED_LAB__MANAGER__CHECK_INTERVAL", "0.5")
    with dask.config.set({"coiled-lab.state-dir": str(path), "coiled-lab.manager.check-interval": 0.5}):
        yield path
    from coiled_lab.control.inprocess import InProcessControl

    InProcessControl.reset_shared()  # the shared control was bound to this test's state dir
    leftovers = cluster_processes(path)
    for proc in leftovers:
        try:
            proc.send_signal(signal.SIGKILL)
        except psutil.Error:
            pass


@pytest.fixture
def control(state_dir):
    """An in-process control plane on the test's state dir."""
    from coiled_lab.control.inprocess import InProcessControl
    from coiled_lab.control.manager import ClusterManager

    ctl = InProcessControl(ClusterManager(state_dir))
    yield ctl
    ctl.close()


@pytest.fixture
def no_cloud(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> dict[str, str]:
    """No AWS credentials anywhere, no Application Default Credentials, no metadata server:
    a laptop that was never set up. Returns the environment, for subprocesses."""
    for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE",
                "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_PRICING", "GOOGLE_APPLICATION_CREDENTIALS"):
        monkeypatch.delenv(key, raising=False)
    (tmp_path / "gcloud").mkdir()
    for key, value in {"AWS_CONFIG_FILE": os.devnull, "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
                       "AWS_EC2_METADATA_DISABLED": "true", "CLOUDSDK_CONFIG": str(tmp_path / "gcloud"),
                       "GCE_METADATA_HOST": "127.0.0.1:9", "GCE_METADATA_IP": "127.0.0.1:9"}.items():
        monkeypatch.setenv(key, value)
    return dict(os.environ)
