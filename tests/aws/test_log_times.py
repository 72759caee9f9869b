"""Following an AWS cluster's logs from a server in Los Angeles.

The CLI's control plane follows the cluster's CloudWatch streams (moto's FilterLogEvents,
through the fault proxy) in Los Angeles' local time, while the scheduler's VM writes them
in UTC, as cloud VMs run. No VM boots here: the scheduler's instance exists in moto, and
its log lines come from the VM's own writer (the bootstrap's ``Output`` and log shipper) in
a process of its own.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import threading
import time

import pytest

from coiled_lab import config

from ..conftest import wait_for
from .conftest import REGION

pytestmark = pytest.mark.slow

# The VM's side: the bootstrap's own lines, stamped and shipped as on a VM, every 0.3 s.
WRITER = """
import os, sys, time
from coiled_lab.bootstrap.logship import CloudWatchLogs, Credentials, LogShipper
from coiled_lab.bootstrap.vm import Output

group, stream, region = sys.argv[1:]
keys = Credentials(os.environ["AWS_ACCESS_KEY_ID"], os.environ["AWS_SECRET_ACCESS_KEY"])
out = Output(LogShipper(lambda: CloudWatchLogs(region, lambda: keys), group, stream, interval=0.2).start())
n = 0
while True:
    out.say(f"tick {n} written at {time.time():.3f}")
    n += 1
    time.sleep(0.3)
"""
TICK = re.compile(r"^(\d\d):(\d\d):(\d\d\.\d{3})Z scheduler-\S+ INFO +coiled_lab\.bootstrap - tick \d+ written at "
                  r"(?P<written>[0-9.]+)$")


def cli(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "coiled_lab.cli", *args], capture_output=True, text=True,
                          timeout=120, env=env)


def test_following_cloudwatch_from_los_angeles_shows_new_lines_at_their_utc_time(network, moto, state_dir):
    los_angeles = {**os.environ, "TZ": "America/Los_Angeles"}
    assert cli("start", "0", "--backend", "aws", "--name", "la", "--no-wait", env=los_angeles).returncode == 0
    follower = subprocess.Popen([sys.executable, "-m", "coiled_lab.cli", "logs", "la", "--follow"],
                                stdout=subprocess.PIPE, text=True, env=los_angeles)
    shown: list[tuple[float, str]] = []  # (when it was read, the line)
    reader = threading.Thread(target=lambda: shown.extend((time.time(), line.rstrip("\n")) for line in
                                                          follower.stdout), daemon=True)
    reader.start()
    writer = None
    try:
        cluster_id = json.loads(cli("list", "--json", env=los_angeles).stdout)[0]["id"]
        # The follower's control plane launches the scheduler's instance (the cluster's
        # streams are read by its id, whichever instance writes).
        scheduler = wait_for(lambda: moto.instances(cluster_id, "scheduler"), timeout=60, what="the scheduler")[0]
        stream = f"{cluster_id}/scheduler-{scheduler['InstanceId']}"
        writer = subprocess.Popen([sys.executable, "-c", WRITER, config.get("aws.log-group"), stream, REGION],
                                  env={**os.environ, "TZ": "UTC"}, stdout=subprocess.DEVNULL)

        def ticks() -> list[tuple[float, re.Match]]:
            return [(read, m) for read, line in list(shown) if (m := TICK.match(line))]

        first_read = wait_for(ticks, timeout=60, what="a first line")[0][0]
        # A line written well after the follower showed its first ones came by a later
        # request, asking CloudWatch for what is newer than what it had shown.
        later = wait_for(lambda: [m for _, m in ticks() if float(m["written"]) > first_read + 3], timeout=30,
                         what="lines written after the first ones were shown")
    finally:
        if writer is not None:
            writer.kill()
        follower.kill()
        reader.join(10)
    # Shown at the time it was written, in UTC.
    m = later[0]
    written = float(m["written"])
    day = (int(m[1]) * 60 + int(m[2])) * 60 + float(m[3])
    assert abs((day - written % 86400 + 43200) % 86400 - 43200) < 1, m.group(0)

    assert cli("stop", "la", env=los_angeles).returncode == 0
    wait_for(lambda: not moto.instances(cluster_id), timeout=30, what="the scheduler's instance terminated")
