"""``%coiled`` in a real IPython shell."""

from __future__ import annotations

import os

import pytest

from coiled_lab.control.inprocess import InProcessControl

from .conftest import cluster_processes, wait_for

pytestmark = pytest.mark.slow


@pytest.fixture
def ip(state_dir):
    from IPython.testing.globalipapp import get_ipython

    InProcessControl.reset_shared()
    shell = get_ipython()
    shell.run_line_magic("load_ext", "coiled_lab")
    yield shell
    InProcessControl.reset_shared()


def test_start_compute_list_scale_logs_stop(ip, state_dir, capsys):
    cluster = ip.run_line_magic("coiled", "start 1 --name nb --idle-timeout 15m")
    from coiled_lab import Cluster
    from distributed import get_client

    assert isinstance(cluster, Cluster) and cluster.name == "nb"
    client = get_client()  # the magic connected the default client
    assert client.submit(lambda x: x + 1, 1).result() == 2

    capsys.readouterr()
    ip.run_line_magic("coiled", "list")
    assert "nb" in capsys.readouterr().out

    ip.run_line_magic("coiled", "scale nb 2 --wait")
    assert "2 workers wanted" in capsys.readouterr().out
    client.wait_for_workers(2, timeout=30)

    ip.run_line_magic("coiled", "logs nb --instance scheduler --limit 3")
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 3 and all("scheduler-scheduler" in line for line in lines)

    assert ip.run_line_magic("coiled", "dashboard nb").startswith("http://127.0.0.1:")
    ip.run_line_magic("coiled", "estimate 3")
    assert "$0.00" in capsys.readouterr().out

    ip.run_line_magic("coiled", "stop nb")
    assert "nb: stopped" in capsys.readouterr().out
    wait_for(lambda: not cluster_processes(state_dir), timeout=15, what="no process left")


def test_cell_magic_takes_a_yaml_spec(ip, state_dir):
    result = ip.run_cell("%%coiled --no-client\nname: from-yaml\nn_workers: 1\nidle_timeout: 5m\n")
    cluster = result.result
    assert cluster.record["spec"]["idle_timeout"] == 300 and cluster.record["status"] == "running"
    ip.run_line_magic("coiled", "stop from-yaml")
    assert cluster_processes(state_dir) == [] or wait_for(lambda: not cluster_processes(state_dir), timeout=15)


@pytest.mark.parametrize(
    "line, message",
    [
        ("%coiled start -1", "N_WORKERS: '-1' is not allowed"),
        ("%coiled start 2 --gpu 1", "--worker-gpu: 1 is not allowed: the local backend has no GPUs"),
        ("%coiled start --backend nope", "--backend: 'nope' is not allowed"),
        ("%coiled stop ghost", "no cluster named or with id 'ghost'"),
        ("%coiled launch", "invalid choice: 'launch'"),
        ("%%coiled\nn_workers: [\n", "not valid YAML"),
        ("%%coiled\nn_wrokers: 2\n", "unknown field 'n_wrokers'"),
        ("%coiled start 2 --backend aws --allow-ingress-from 198.51.100.0/24", "no usable AWS credentials"),
        ("%coiled logs ghost --since garbage", "since: 'garbage' is not a time"),
        ("%coiled start 1 --idle-timeout 1e400s", "--idle-timeout: '1e400s' is not allowed"),
    ],
)
def test_errors_are_one_line(ip, state_dir, capsys, monkeypatch, line, message):
    for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE"):
        monkeypatch.delenv(key, raising=False)
    for key, value in {"AWS_CONFIG_FILE": os.devnull, "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
                       "AWS_EC2_METADATA_DISABLED": "true"}.items():
        monkeypatch.setenv(key, value)
    result = ip.run_cell(line)
    out = capsys.readouterr()
    shown = out.out + out.err
    assert message in shown
    assert "Traceback" not in shown
    assert result.error_in_exec is not None
    assert cluster_processes(state_dir) == []


def test_env_shows_what_this_kernel_would_sync(ip, state_dir, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "analysis.py").write_text("x = 1\n")
    ip.run_line_magic("coiled", "env --backend local --exclude nothing.py")
    shown = capsys.readouterr().out
    assert "python %d.%d on " % __import__("sys").version_info[:2] in shown
    assert "files of the working directory: 1 " in shown and "runs the Jupyter server's own environment" in shown


def test_stop_prints_one_line_in_ipython(state_dir, tmp_path):
    """In a real IPython (its own process, as a terminal user has it): the stop's wait ends
    the request it no longer needs, and nothing but the one line reaches the user."""
    import subprocess
    import sys

    script = "%load_ext coiled_lab\n_ = %coiled start 1 --name one-line\n%coiled stop one-line\n"
    done = subprocess.run([sys.executable, "-m", "IPython", "--no-banner", "--colors=NoColor", "-c", script],
                          capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().splitlines()[-1:] == ["one-line: stopped"]
    assert "Traceback" not in done.stdout + done.stderr and "InvalidStateError" not in done.stderr
