import asyncio
import logging
import time
from datetime import datetime, timezone

import pytest

from coiled_lab import utc
from coiled_lab.bootstrap.logship import utc_stamps
from coiled_lab.logs import LogRecord, matches, parse_lines, since_from, tail

# 2026-11-23 19:49:52.123 UTC: 11:49:52.123 in Los Angeles (PST, UTC-8).
WHEN = datetime(2026, 11, 23, 19, 49, 52, 123000, tzinfo=timezone.utc).timestamp()


@pytest.fixture
def los_angeles(monkeypatch):
    """This process's local time is Los Angeles' for the test."""
    monkeypatch.setenv("TZ", "America/Los_Angeles")
    time.tzset()
    assert time.localtime(WHEN).tm_hour == 11
    yield
    monkeypatch.undo()
    time.tzset()

LINES = """\
2026-11-23 10:00:00,100 - distributed.worker - INFO - Start worker at: tls://127.0.0.1:1
2026-11-23 10:00:01,200 - distributed.worker - ERROR - Something broke
Traceback (most recent call last):
  File "x.py", line 1
ValueError: bad
2026-11-23 10:00:02,000 - distributed.core - WARNING - Event loop was unresponsive
plain print output
""".splitlines(keepends=True)


def test_parse_lines_keeps_times_and_levels_across_continuation_lines():
    recs = parse_lines(LINES, "w1", "worker", fallback_time=0)
    assert len(recs) == 7
    assert recs[0].level == "INFO" and recs[0].message == "distributed.worker - Start worker at: tls://127.0.0.1:1"
    assert [r.level for r in recs[1:5]] == ["ERROR"] * 4  # the traceback belongs to the error
    assert recs[1].time == recs[4].time < recs[5].time
    assert recs[6].message == "plain print output" and recs[6].level == "WARNING"


def test_matches_instance_level_text():
    rec = LogRecord(1.0, "w1", "worker", "WARNING", "Event loop was unresponsive")
    assert matches(rec, instance="worker") and matches(rec, instance="w1") and matches(rec, instance="worker-w1")
    assert not matches(rec, instance="scheduler")
    assert matches(rec, level="info") and matches(rec, level="WARNING") and not matches(rec, level="error")
    assert matches(rec, q="UNRESPONSIVE") and not matches(rec, q="disk")


def test_tail_follows_without_repeating_lines_that_share_a_time_stamp():
    batches = [
        [LogRecord(1, "a", "worker", "INFO", "x"), LogRecord(2, "a", "worker", "INFO", "y")],
        [LogRecord(2, "a", "worker", "INFO", "y"), LogRecord(2, "b", "worker", "INFO", "y2")],
        [LogRecord(2, "b", "worker", "INFO", "y2"), LogRecord(3, "a", "worker", "INFO", "z")],
    ]
    asked = []

    async def fetch(since):
        asked.append(since)
        return batches[min(len(asked) - 1, 2)]

    async def run():
        return [r.message async for r in tail(fetch, interval=0, stop=lambda: len(asked) >= 3)]

    assert asyncio.run(run()) == ["x", "y", "y2", "z"]
    assert asked == [None, 2, 2, 3]  # one last fetch after stop() turns true


def test_since_from():
    assert since_from(None) is None
    assert since_from(12.5) == 12.5 and since_from("12.5") == 12.5
    assert abs(since_from("10m") - (time.time() - 600)) < 5
    assert since_from("2026-11-23T10:00:00") > 0
    with pytest.raises(ValueError, match="since"):
        since_from("yesterday-ish")


@pytest.mark.parametrize("stamp", ["2026-11-23 19:49:52,123Z", "2026-11-23 11:49:52,123-08:00",
                                   "2026-11-23 11:49:52,123-0800", "2026-11-23T19:49:52.123",
                                   "2026-11-23 19:49:52,123"])
def test_a_stamp_is_read_in_its_own_zone_and_utc_without_one_whatever_the_local_zone(los_angeles, stamp):
    (rec,) = parse_lines([f"{stamp} - distributed.worker - INFO - hello"], "w1", "worker", fallback_time=0)
    assert rec.time == pytest.approx(WHEN, abs=1e-6)
    assert rec.message == "distributed.worker - hello"


def test_what_coiled_labs_processes_write_reads_back_as_the_time_it_was_written(los_angeles):
    # The dask processes' handlers (coiled_lab.bootstrap.utclog) and the VM bootstrap's
    # own lines format with utc_stamps.
    formatter = utc_stamps(logging.Formatter("%(asctime)s - %(name)s - %(levelname)s - %(message)s"))
    record = logging.LogRecord("distributed.scheduler", logging.INFO, "", 0, "State start", None, None)
    record.created, record.msecs = WHEN, 123.0
    line = formatter.format(record)
    assert line == "2026-11-23 19:49:52,123Z - distributed.scheduler - INFO - State start"
    (rec,) = parse_lines([line], "scheduler", "scheduler", fallback_time=0)
    assert rec.time == pytest.approx(WHEN, abs=1e-6)


def test_times_shown_and_given_are_utc_and_say_so(los_angeles):
    rec = LogRecord(WHEN, "w1", "worker", "INFO", "hello")
    assert rec.format() == "19:49:52.123Z worker-w1 INFO    hello"
    assert since_from("2026-11-23T19:49:52.123") == pytest.approx(WHEN)
    assert since_from("2026-11-23T11:49:52.123-08:00") == pytest.approx(WHEN)
    assert utc.stamp(WHEN) == "2026-11-23 19:49:52Z"
