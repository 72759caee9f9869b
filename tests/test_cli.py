"""``coiled-lab`` as a user runs it: a subprocess with its own in-process manager."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time

import pytest

from .conftest import cluster_processes, wait_for

pytestmark = pytest.mark.slow


def cli(*args: str, timeout: float = 120, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "coiled_lab.cli", *args], capture_output=True, text=True, timeout=timeout, env=env
    )


def test_start_list_logs_scale_stop(state_dir):
    started = cli("start", "1", "--name", "from-cli", "--idle-timeout", "30m")
    assert started.returncode == 0, started.stderr
    assert "running" in started.stdout and "workers 1/1 ready" in started.stdout

    listed = json.loads(cli("list", "--json").stdout)
    assert [(c["name"], c["status"], c["workers"]["ready"]) for c in listed] == [("from-cli", "running", 1)]
    assert listed[0]["spec"]["idle_timeout"] == 1800
    assert 0 < listed[0]["time_left"]["idle_timeout"] <= 1800

    table = cli("list").stdout
    assert "from-cli" in table and "1/1" in table

    logs = cli("logs", "from-cli", "--instance", "scheduler", "--limit", "5")
    assert logs.returncode == 0 and len(logs.stdout.strip().splitlines()) == 5
    assert all(" scheduler-scheduler " in line for line in logs.stdout.strip().splitlines())

    dashboard = cli("dashboard", "from-cli")
    assert dashboard.returncode == 0 and dashboard.stdout.startswith("http://127.0.0.1:")
    assert dashboard.stdout.strip().endswith("/status")

    scaled = cli("scale", "from-cli", "2", "--wait")
    assert scaled.returncode == 0, scaled.stderr
    assert json.loads(cli("status", "from-cli", "--json").stdout)["workers"]["ready"] == 2

    stopped = cli("stop", "from-cli")
    assert stopped.returncode == 0 and "stopped" in stopped.stdout
    wait_for(lambda: not cluster_processes(state_dir), timeout=15, what="no process left")
    assert cli("list").stdout.startswith("no clusters running")
    assert "from-cli" in cli("list", "--all").stdout


def test_follow_logs_until_the_cluster_stops_itself_and_reads_while_busy(state_dir):
    assert cli("start", "1", "--name", "followed", "--idle-timeout", "15s").returncode == 0
    follower = subprocess.Popen([sys.executable, "-m", "coiled_lab.cli", "logs", "followed", "--follow"],
                                stdout=subprocess.PIPE, text=True)
    try:
        assert follower.stdout.readline().strip()  # a first log line arrives
        # The follower's manager now owns the store: others may read, not change.
        listed = cli("list", "--json")
        assert listed.returncode == 0 and json.loads(listed.stdout)[0]["name"] == "followed"
        busy = cli("scale", "followed", "2")
        assert busy.returncode == 3 and "another coiled-lab manager" in busy.stderr
        out, _ = follower.communicate(timeout=60)  # ends by itself once the cluster stopped
    finally:
        follower.kill()
    assert follower.returncode == 0
    assert "coiled-lab: stopping cluster: idle_timeout" in out
    assert json.loads(cli("status", "followed", "--json").stdout)["status"] == "stopped"
    wait_for(lambda: not cluster_processes(state_dir), timeout=15, what="no process left")


def test_a_follow_in_los_angeles_shows_new_lines_at_their_utc_time(state_dir):
    """The CLI's control plane, the dask processes it starts and the follower all run in Los
    Angeles' local time (UTC-7 or -8): the lines still come, at the UTC time they were written."""
    los_angeles = {**os.environ, "TZ": "America/Los_Angeles"}
    assert cli("start", "1", "--name", "la", "--idle-timeout", "15s", env=los_angeles).returncode == 0
    began = time.time()
    follower = subprocess.Popen([sys.executable, "-m", "coiled_lab.cli", "logs", "la", "--follow"],
                                stdout=subprocess.PIPE, text=True, env=los_angeles)
    try:
        out, _ = follower.communicate(timeout=90)  # ends by itself once the cluster stopped
    finally:
        follower.kill()
    ended = time.time()
    assert follower.returncode == 0
    shown = [(re.match(r"(\d\d):(\d\d):(\d\d\.\d{3})Z ", line), line) for line in out.splitlines()]
    assert shown and all(m for m, _ in shown), out  # every line starts with its time, marked UTC

    def utc_time(m: re.Match) -> float:
        """The epoch time of a shown time of day: the one within 12 hours of now."""
        day = (int(m[1]) * 60 + int(m[2])) * 60 + float(m[3])
        return ended + ((day - ended % 86400 + 43200) % 86400 - 43200)

    # Lines written after the follow began (the scheduler stopped itself 15 s after it
    # started idling) came, and every line is shown at the time it was written.
    (stopping,) = [m for m, line in shown if "coiled-lab: stopping cluster: idle_timeout" in line]
    assert began - 1 < utc_time(stopping) < ended
    assert all(began - 120 < utc_time(m) < ended for m, _ in shown)
    wait_for(lambda: not cluster_processes(state_dir), timeout=15, what="no process left")


@pytest.mark.parametrize(
    "args, needle",
    [
        (["start", "-2"], "N_WORKERS: '-2' is not allowed"),
        (["start", "3", "--backend", "azure"], "--backend: 'azure' is not allowed"),
        (["start", "3", "--gpu", "1"], "--worker-gpu: 1 is not allowed"),
        (["start", "--idle-timeout", "soon"], "--idle-timeout: 'soon' is not allowed"),
        (["start", "--spot-policy", "cheap"], "--spot-policy: 'cheap' is not allowed"),
        (["start", "--tag", "novalue"], "expected KEY=VALUE"),
        (["start", "--frobnicate"], "unrecognized arguments"),
        (["scale", "nope", "x"], "no cluster named"),
    ],
)
def test_bad_input_exit_code_and_message(state_dir, args, needle):
    result = cli(*args)
    assert result.returncode in (2, 4)
    assert needle in result.stderr
    assert "Traceback" not in result.stderr
    assert cluster_processes(state_dir) == []


def test_unknown_cluster_is_exit_4(state_dir):
    result = cli("stop", "ghost")
    assert result.returncode == 4 and "no cluster named or with id 'ghost'" in result.stderr


def test_help_lists_every_spec_field_with_defaults(state_dir):
    from coiled_lab.spec import FIELDS

    out = " ".join(cli("start", "--help").stdout.split())
    for field in FIELDS:
        assert (field.upper() if field == "n_workers" else "--" + field.replace("_", "-")) in out
    assert "(default: 20 minutes)" in out  # defaults are shown as configured
    assert "(default: on-demand)" in out


def test_estimate_before_anything_starts(state_dir):
    est = json.loads(cli("estimate", "6", "--json").stdout)
    assert est["per_hour"] == 0 and est["n_workers"] == 6 and est["currency"] == "USD"
    assert "$0.00" in cli("estimate", "6").stdout
    assert cluster_processes(state_dir) == []


def test_env_shows_what_would_be_synced_from_here(state_dir, tmp_path):
    tmp_path = tmp_path / "work"
    tmp_path.mkdir()
    (tmp_path / "mymodule.py").write_text("x = 1\n")
    (tmp_path / ".env").write_text("SECRET=1\n")

    def env(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "coiled_lab.cli", "env", *args], capture_output=True, text=True,
                              timeout=120, cwd=tmp_path)

    shown = json.loads(env("--json", "--backend", "local").stdout)
    assert shown["where"] == f"the coiled-lab CLI ({sys.executable})"
    assert shown["python"] == "%d.%d" % sys.version_info[:2] and shown["files"] == 1  # mymodule.py, not .env
    assert shown["built"] is None and len(shown["hash"]) == 32
    text = env("--backend", "local").stdout
    assert "files of the working directory: 1" in text and "runs the Jupyter server's own environment" in text

    # .env is never shipped, even when asked for
    assert json.loads(env("--json", "--include", "*", "--backend", "local").stdout)["files"] == 1
    big = tmp_path / "data.bin"
    big.write_bytes(b"\0" * (2 << 20))
    too_big = subprocess.run([sys.executable, "-m", "coiled_lab.cli", "start", "1", "--backend", "aws"],
                             capture_output=True, text=True, timeout=120, cwd=tmp_path,
                             env={**__import__("os").environ, "DASK_COILED_LAB__SYNC__INCLUDE": '["*"]',
                                  "DASK_COILED_LAB__SYNC__MAX_BYTES": "1048576"})
    assert too_big.returncode == 2 and "Traceback" not in too_big.stderr
    assert "sync.include" in too_big.stderr and "data.bin" in too_big.stderr
    assert cluster_processes(state_dir) == []


def test_cleanup_goes_past_an_unreachable_cloud(state_dir):
    """An AWS cluster in the store's history and AWS unreachable (a port where nothing
    listens): the CLI says so, exits 1, and still stops a local cluster's leftovers."""
    import socket

    from coiled_lab.control.states import State
    from coiled_lab.control.store import ClusterRecord, Store

    assert cli("start", "0", "--name", "left-running").returncode == 0
    store = Store(state_dir / "coiled-lab.sqlite")
    try:
        local = store.find_cluster("left-running")
        store.update_cluster(local.id, status="stopped", target="stopped")  # a crash left its scheduler running
        now = time.time()
        store.insert_cluster(ClusterRecord(
            id="a0a0a0a0a0a0", name="on-aws", backend="aws", spec={"n_workers": 1, "region": "us-east-1"},
            status=State.stopped, target="stopped", message=None, state={}, created_at=now, updated_at=now))
    finally:
        store.close()
    assert len(cluster_processes(state_dir)) == 1
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        closed = s.getsockname()[1]
    env = {**os.environ, "AWS_ACCESS_KEY_ID": "AKIAUNREACHABLE00001", "AWS_SECRET_ACCESS_KEY": "x",
           "AWS_ENDPOINT_URL": f"http://127.0.0.1:{closed}", "AWS_CONFIG_FILE": os.devnull,
           "AWS_SHARED_CREDENTIALS_FILE": os.devnull, "AWS_EC2_METADATA_DISABLED": "true",
           "DASK_COILED_LAB__AWS__MAX_ATTEMPTS": "1"}
    done = cli("cleanup", env=env)
    assert done.returncode == 1, (done.stdout, done.stderr)
    assert f"stopped 1 instance(s) of left-running ({local.id})" in done.stdout
    assert "aws was not cleaned up" in done.stdout and "aws's tagged resources were not swept" in done.stdout
    assert "Traceback" not in done.stderr
    wait_for(lambda: not cluster_processes(state_dir), timeout=30, what="the leftover scheduler stopped")


def _without_cloud(state_dir, tmp_path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "GOOGLE_", "GCE_"))}
    env.update(AWS_CONFIG_FILE=os.devnull, AWS_SHARED_CREDENTIALS_FILE=os.devnull, AWS_EC2_METADATA_DISABLED="true",
               AWS_DEFAULT_REGION="us-east-1", NO_GCE_CHECK="True", CLOUDSDK_CONFIG=str(tmp_path / "gcloud"),
               GOOGLE_APPLICATION_CREDENTIALS=str(tmp_path / "no-key.json"), **extra)
    return env


def _closed_port() -> int:
    import socket

    with socket.socket() as sock:  # bound, never listening: a connect is refused at once
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


FAILURES = {
    # name: (argv, extra environment, exit code, what the one line says)
    "no AWS credentials": (["start", "2", "--backend", "aws", "--allow-ingress-from", "198.51.100.0/24"], {}, 3,
                           "no usable AWS credentials"),
    "AWS on a closed port": (["start", "2", "--backend", "aws", "--allow-ingress-from", "198.51.100.0/24"],
                             {"AWS_ACCESS_KEY_ID": "AKIAFAKEFAKEFAKE0001", "AWS_SECRET_ACCESS_KEY": "fake",
                              "AWS_ENDPOINT_URL": "http://127.0.0.1:{port}"}, 3, "cannot reach AWS (ec2.us-east-1)"),
    "no GCP credentials": (["start", "2", "--backend", "gcp", "--allow-ingress-from", "198.51.100.0/24"], {}, 3,
                           "no usable GCP credentials"),
    "over an admin's limit": (["start", "3"], {"DASK_COILED_LAB__LIMITS__MAX_WORKERS": "2"}, 5,
                              "coiled-lab.limits.max-workers"),
    "infinite memory": (["start", "1", "--worker-memory", "1e400B"], {}, 2, "--worker-memory: '1e400B'"),
    "infinite timeout": (["start", "1", "--idle-timeout", "1e400s"], {}, 2, "--idle-timeout: '1e400s'"),
    "a --since that is no time": (["logs", "anything", "--since", "garbage"], {}, 2, "since: 'garbage' is not a time"),
    "a state dir that is a file": (["list"], {"DASK_COILED_LAB__STATE_DIR": "{file}"}, 3, "{file}"),
}


@pytest.mark.parametrize("failure", list(FAILURES))
def test_every_failure_is_one_line_and_an_exit_code(failure, state_dir, tmp_path):
    """A table of what goes wrong for new users: each is one line on stderr naming the
    cause and the fix, an exit code of the error table, no traceback, and no hang."""
    argv, extra, code, says = FAILURES[failure]
    not_a_dir = tmp_path / "state-file"
    not_a_dir.write_text("not a directory")
    fill = {"port": str(_closed_port()), "file": str(not_a_dir)}
    extra = {k: v.format(**fill) for k, v in extra.items()}
    started = time.monotonic()
    done = cli(*argv, env=_without_cloud(state_dir, tmp_path, **extra), timeout=60)
    took = time.monotonic() - started
    lines = done.stderr.strip().splitlines()
    assert (done.returncode, len(lines)) == (code, 1), done.stderr
    assert says.format(**fill) in lines[0] and "Traceback" not in done.stdout + done.stderr
    assert took < 20, f"{failure}: {took:.0f} s"
    assert not cluster_processes(state_dir)


def test_debug_shows_the_traceback(state_dir, tmp_path):
    done = cli("--debug", "start", "2", "--backend", "aws", "--allow-ingress-from", "198.51.100.0/24",
               env=_without_cloud(state_dir, tmp_path))
    assert done.returncode != 0 and "Traceback" in done.stderr and "NoCredentialsError" in done.stderr
