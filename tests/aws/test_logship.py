"""Log delivery, counted end to end: numbered lines written through the VM's log shipper
reach CloudWatch (moto, through the fault proxy) with no gap, no duplicate and in order,
across throttling bursts and a network cut; only lines beyond the buffer's cap are
dropped, and the stream says how many."""

from __future__ import annotations

import threading
import time
import urllib.parse

import os

import pytest

from coiled_lab.bootstrap.logship import EVENT_OVERHEAD, CloudWatchLogs, Credentials, LogShipper

from ..conftest import wait_for
from .conftest import REGION
from .netcut import NetCut
from .proxy import json_error

pytestmark = pytest.mark.slow

LINES = 30_000


def keys() -> Credentials:
    """The fake keys aws_env sets (moto accepts any signature: IAM auth is off)."""
    return Credentials(os.environ["AWS_ACCESS_KEY_ID"], os.environ["AWS_SECRET_ACCESS_KEY"])


def read_back(moto, group: str, stream: str) -> tuple[list[dict], list[dict]]:
    """The stream's events, read past the proxy both ways the product reads: GetLogEvents
    (one stream, from the head) and FilterLogEvents (by stream prefix, as logs() does)."""
    logs = moto.client("logs")
    got, token = [], None
    while True:
        page = logs.get_log_events(logGroupName=group, logStreamName=stream, startFromHead=True,
                                   **({"nextToken": token} if token else {}))
        got += page["events"]
        if page["nextForwardToken"] == token:
            break
        token = page["nextForwardToken"]
    filtered, token = [], None
    while True:
        page = logs.filter_log_events(logGroupName=group, logStreamNamePrefix=stream.split("/")[0] + "/",
                                      **({"nextToken": token} if token else {}))
        filtered += page["events"]
        token = page.get("nextToken")
        if not token:
            return got, filtered


def throttle_bursts(proxy, group: str, bursts: int, length: int) -> list[int]:
    """PutLogEvents to ``group`` is refused ``length`` times in a row, then let through
    ``length`` times, ``bursts`` times over: each burst outlasts the client's retries."""
    calls, throttled = [0], [0]

    def hook(request, forward):
        if request.action != "PutLogEvents" or request.params.get("logGroupName") != group:
            return None
        calls[0] += 1
        if throttled[0] < bursts * length and ((calls[0] - 1) // length) % 2 == 0:
            throttled[0] += 1
            return json_error("ThrottlingException", "Rate exceeded")
        return None

    proxy.add(hook)
    return throttled


def test_numbered_lines_survive_throttling_and_a_network_cut(aws_env, proxy, moto):
    group, stream = f"logship-{time.monotonic_ns()}", "c1/worker-i-0seq"
    moto.client("logs").create_log_group(logGroupName=group)
    throttled = throttle_bursts(proxy, group, bursts=2, length=4)
    address = urllib.parse.urlsplit(proxy.url)
    link = NetCut((address.hostname, address.port))
    # The VM's client (logship.CloudWatchLogs) with fewer attempts, so the shipper's own
    # retries are reached too, not only the client's.
    shipper = LogShipper(
        lambda: CloudWatchLogs(REGION, keys, endpoint=link.url, max_attempts=3),
        group, stream, max_lines=LINES, interval=0.05, max_backoff=1.0,
    ).start()
    written = [0]
    bursts_done, restored = threading.Event(), threading.Event()

    def writer() -> None:
        """A chatty dask process: lines in chunks, as its output comes. Past a third it
        only trickles until both bursts happened, past two thirds until the link is back,
        so every phase of the test happens while lines are still being written."""
        for i in range(LINES):
            shipper.write(f"seq {i:06d}")
            written[0] = i + 1
            if i % 50 == 49:
                time.sleep(0.01)
            if (i >= LINES // 3 and not bursts_done.is_set()) or (i >= 2 * LINES // 3 and not restored.is_set()):
                time.sleep(0.005)

    thread = threading.Thread(target=writer)
    thread.start()
    try:
        wait_for(lambda: throttled[0] >= 8, timeout=90, what="two throttling bursts")
        bursts_done.set()
        wait_for(lambda: written[0] >= LINES // 2, timeout=60, what="half written")
        puts_before_cut = len(proxy.calls("PutLogEvents"))
        link.cut()
        failures = shipper.failures
        wait_for(lambda: shipper.failures >= failures + 2, timeout=60, what="the shipper to fail twice on the cut")
        assert len(proxy.calls("PutLogEvents")) - puts_before_cut <= 1  # at most one already on its way
        link.restore()
        restored.set()
        thread.join(60)
        wait_for(lambda: shipper.sent >= LINES, timeout=90, what=f"{LINES} lines sent")
    finally:
        bursts_done.set()
        restored.set()
        shipper.close(timeout=30)
        link.close()
        thread.join(5)

    got, filtered = read_back(moto, group, stream)
    expected = [f"seq {i:06d}" for i in range(LINES)]
    for events in (got, filtered):
        messages = [e["message"] for e in events]
        assert len(messages) == LINES and len(set(messages)) == LINES, "lines lost or repeated"
        assert messages == expected, "lines out of order"
        stamps = [e["timestamp"] for e in events]
        assert stamps == sorted(stamps)
    assert shipper.dropped_total == 0 and shipper.sent == LINES
    print(f"{LINES} lines, {len(proxy.calls('PutLogEvents'))} PutLogEvents calls, {throttled[0]} throttled, "
          f"{shipper.failures} failed batches, {link.refused_while_cut} connections reset")
    # Each whole burst outlasted the client's 3 attempts: one failure of the shipper's own.
    assert throttled[0] == 8 and shipper.failures >= 2 + 2


def test_beyond_the_byte_cap_the_oldest_lines_are_dropped_and_counted(aws_env, proxy, moto):
    group, stream = f"logship-cap-{time.monotonic_ns()}", "c2/scheduler-i-0cap"
    line = 1000  # bytes per message
    cap = 100 * (line + EVENT_OVERHEAD)  # the buffer holds 100 such lines, whatever max_lines says
    shipper = LogShipper(lambda: CloudWatchLogs(REGION, keys), group, stream,
                         max_lines=10_000, max_bytes=cap, interval=0.05, max_backoff=0.2)
    for i in range(1000):
        shipper.write(f"{i:06d} " + "x" * (line - 7))
    assert shipper.dropped_total == 900  # before anything was even tried
    # The group does not exist yet: every attempt fails and nothing more is lost.
    shipper.start()
    wait_for(lambda: shipper.failures >= 2, what="two failed attempts")
    assert shipper.dropped_total == 900
    moto.client("logs").create_log_group(logGroupName=group)
    shipper.close(timeout=30)

    got, _ = read_back(moto, group, stream)
    messages = [e["message"] for e in got]
    assert messages[0] == "coiled-lab: 900 log lines were dropped while CloudWatch was unreachable"
    assert [m[:6] for m in messages[1:]] == [f"{i:06d}" for i in range(900, 1000)]
