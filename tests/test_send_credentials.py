"""The kernel's own AWS credentials reach the workers as STS session credentials.

STS is moto's, as a real HTTP server on 127.0.0.1 (boto3 finds it through
AWS_ENDPOINT_URL), and the kernel is this test process holding fake long-lived keys.
"""

from __future__ import annotations

import datetime
import os
import secrets
import sys
import string
import time

import cloudpickle
import dask.config
import pytest
from distributed import Client

from coiled_lab import Cluster

from .conftest import cluster_processes, wait_for

# The workers cannot import this module: send its functions by value.
cloudpickle.register_pickle_by_value(sys.modules[__name__])
SECRETS = ("AccessKeyId", "SecretAccessKey", "SessionToken")
LONG_LIVED = {"AWS_ACCESS_KEY_ID": "AKIA" + "T" * 16, "AWS_SECRET_ACCESS_KEY": "long-lived-secret-" + "s" * 22}


@pytest.fixture
def sts(monkeypatch, tmp_path):
    """moto's STS on loopback; every session issued is recorded (for the secret scan).

    moto 5.2.1 answers GetSessionToken with AWS's documentation example, the same
    ``AKIA...`` key every time; real STS hands out a fresh ``ASIA...`` key, secret and token
    per call. The server runs in this process, so its answer is made to look like STS's.
    """
    from moto.server import ThreadedMotoServer
    from moto.sts import responses

    issued: list[dict[str, str]] = []
    original = responses.TokenResponse.get_session_token

    def get_session_token(self):
        result = original(self)
        creds = result.result["Credentials"]
        alphabet = string.ascii_uppercase + string.digits
        creds["AccessKeyId"] = "ASIA" + "".join(secrets.choice(alphabet) for _ in range(16))
        creds["SecretAccessKey"] = secrets.token_urlsafe(30)
        creds["SessionToken"] = secrets.token_urlsafe(120)
        expiration = creds["Expiration"]
        if expiration.tzinfo is None:
            expiration = expiration.replace(tzinfo=datetime.timezone.utc)
        issued.append({k: creds[k] for k in SECRETS} | {"expires": expiration.timestamp()})
        return result

    monkeypatch.setattr(responses.TokenResponse, "get_session_token", get_session_token)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    for key, value in LONG_LIVED.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://{host}:{port}")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.delenv("AWS_SESSION_TOKEN", raising=False)
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-aws-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-aws-credentials"))
    yield issued
    server.stop()


def aws_environment() -> dict:
    names = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_CREDENTIAL_EXPIRATION")
    return {name: os.environ.get(name) for name in names}


def boto3_key_id() -> str:
    """What boto3 itself resolves on the worker (the chain s3fs uses too)."""
    import boto3

    return boto3.Session().get_credentials().get_frozen_credentials().access_key


def assert_no_secret_leaked(state_dir, values) -> None:
    values = {v for v in values if v}
    for path in state_dir.rglob("*"):
        if path.is_file():
            data = path.read_bytes()
            leaked = [v[:4] for v in values if v.encode() in data]
            assert not leaked, f"{path} holds a credential ({leaked})"
    for proc in cluster_processes(state_dir):
        cmdline = " ".join(proc.cmdline())
        assert not [v for v in values if v in cmdline], f"a credential is on the command line of pid {proc.pid}"


@pytest.mark.slow
def test_workers_get_session_credentials_and_so_do_workers_added_later(control, state_dir, sts):
    with Cluster(n_workers=1, control=control) as cluster, Client(cluster) as client:
        assert all(v["AWS_ACCESS_KEY_ID"] is None for v in client.run(aws_environment).values())
        cluster.send_credentials()
        [session] = sts
        seen = client.submit(aws_environment, pure=False).result()
        assert seen["AWS_ACCESS_KEY_ID"].startswith("ASIA") and seen["AWS_ACCESS_KEY_ID"] == session["AccessKeyId"]
        assert seen["AWS_SECRET_ACCESS_KEY"] == session["SecretAccessKey"] and seen["AWS_SESSION_TOKEN"]
        assert LONG_LIVED["AWS_ACCESS_KEY_ID"] not in seen.values()
        assert LONG_LIVED["AWS_SECRET_ACCESS_KEY"] not in seen.values()
        assert client.submit(boto3_key_id, pure=False).result() == session["AccessKeyId"]

        cluster.scale(2)
        client.wait_for_workers(2, timeout=60)
        by_worker = client.run(aws_environment)
        assert len(by_worker) == 2
        assert {v["AWS_ACCESS_KEY_ID"] for v in by_worker.values()} == {session["AccessKeyId"]}
        assert len(sts) == 1  # a new worker gets the registered credentials; no STS call for it

        assert_no_secret_leaked(state_dir, [*LONG_LIVED.values(), *(session[k] for k in SECRETS)])


@pytest.mark.slow
def test_the_option_sends_them_at_start_and_they_are_refreshed_before_they_expire(control, state_dir, sts):
    # STS grants 15 minutes at least: refreshing at 0.5% of that is every 4.5 s.
    with dask.config.set({"coiled-lab.credentials.duration": "15 minutes", "coiled-lab.credentials.refresh-at": 0.005}):
        with Cluster(n_workers=2, control=control, send_credentials=True) as cluster, Client(cluster) as client:
            sent_at = time.time()
            client.wait_for_workers(2, timeout=60)
            first = client.run(aws_environment)
            [key_id] = {v["AWS_ACCESS_KEY_ID"] for v in first.values()}
            assert key_id.startswith("ASIA") and key_id == sts[0]["AccessKeyId"]
            expires = sts[0]["expires"]

            fresh = wait_for(lambda: (now := client.run(aws_environment)) and
                             all(v["AWS_ACCESS_KEY_ID"] not in (key_id, None) for v in now.values()) and now,
                             timeout=10, interval=0.2, what="fresh credentials on every worker")
            refreshed_at = time.time()
            assert refreshed_at - sent_at > 3, "sent again long before refresh-at of the lifetime"
            assert refreshed_at < expires, "refreshed only after the first ones expired"
            assert {v["AWS_ACCESS_KEY_ID"] for v in fresh.values()} <= {s["AccessKeyId"] for s in sts[1:]}
            # And again: the refresh keeps going (every ~4.5 s; slower on a loaded machine).
            wait_for(lambda: len(sts) >= 3, timeout=20, interval=0.2, what="a second refresh")
        assert_no_secret_leaked(state_dir, [*LONG_LIVED.values(), *(s[k] for s in sts for k in SECRETS)])


def test_refresh_comes_at_a_share_of_the_lifetime():
    from coiled_lab.credentials import AWSCredentialsPlugin, next_refresh

    plugin = AWSCredentialsPlugin("ASIAX", "secret-value", "token-value", expiration=1_000.0 + 3600)
    assert next_refresh(plugin, now=1_000.0) == pytest.approx(0.8 * 3600)
    assert next_refresh(AWSCredentialsPlugin("ASIAX", "s", "t", None), now=0) == pytest.approx(0.8 * 3600)
    assert next_refresh(plugin, now=1_000.0 + 3600) == 1.0  # expired: at once (a second)
    assert "secret-value" not in repr(plugin) and "token-value" not in repr(plugin)


def test_the_machines_own_role_is_never_sent(monkeypatch):
    """An instance (or container) role is what a server on that machine may provision with."""
    import boto3
    from botocore.credentials import Credentials

    from coiled_lab.credentials import session_credentials
    from coiled_lab.errors import ClusterError

    role = Credentials("ASIAMACHINEROLE00001", "machine-secret", "machine-token", method="iam-role")
    monkeypatch.setattr(boto3.Session, "get_credentials", lambda self: role)
    with pytest.raises(ClusterError, match="instance or container role"):
        session_credentials()
