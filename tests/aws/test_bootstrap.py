"""The VM side on its own: the log shipper and its standard-library CloudWatch client
against CloudWatch (moto), signed as botocore signs, with the instance role's credentials
from IMDSv2; the IMDSv2 client, package_sync, and the dask command lines."""

from __future__ import annotations

import datetime
import json
import os
import time
from pathlib import Path

import boto3
import pytest

from coiled_lab.bootstrap import packages, vm
from coiled_lab.bootstrap.logship import (MAX_BATCH_EVENTS, CloudWatchLogs, CloudWatchLogsError, Credentials,
                                          InstanceRoleCredentials, LogShipper, sigv4_headers)

from ..conftest import wait_for
from .emulator import Identity, MetadataServer

REGION = "eu-central-1"  # a region of its own: this test makes and removes log groups


def events(group: str, stream: str) -> list[dict]:
    logs = boto3.client("logs", region_name=REGION)
    out, token = [], None
    while True:
        page = logs.get_log_events(logGroupName=group, logStreamName=stream, startFromHead=True,
                                   **({"nextToken": token} if token else {}))
        out += page["events"]
        if page["nextForwardToken"] == token:
            return out
        token = page["nextForwardToken"]


def environment_keys() -> Credentials:
    """The fake keys aws_env sets (moto accepts any signature: IAM auth is off)."""
    return Credentials(os.environ["AWS_ACCESS_KEY_ID"], os.environ["AWS_SECRET_ACCESS_KEY"])


def test_lines_arrive_in_order_in_bounded_batches_and_survive_an_outage(aws_env, proxy):
    group = f"shipper-{time.monotonic_ns()}"
    logs = boto3.client("logs", region_name=REGION)
    # The VM's own client (no boto3 there), at AWS_ENDPOINT_URL: the proxy in front of moto.
    shipper = LogShipper(lambda: CloudWatchLogs(REGION, environment_keys), group, "c1/worker-i-1",
                         max_lines=12_000, interval=0.1, max_backoff=0.2)
    before = len(proxy.calls("PutLogEvents"))
    # More lines than the queue holds: the oldest go, and the stream will say how many.
    for i in range(15_000):
        shipper.write(f"line {i}")
    # The group does not exist yet: CloudWatch refuses, the lines wait, and they are sent
    # once it does.
    shipper.start()
    wait_for(lambda: any(c.params["logGroupName"] == group for c in proxy.calls("CreateLogStream")),
             what="a first attempt")
    logs.create_log_group(logGroupName=group)
    shipper.close(timeout=30)

    received = [e["message"] for e in events(group, "c1/worker-i-1")]
    assert received[0] == "coiled-lab: 3000 log lines were dropped while CloudWatch was unreachable"
    assert received[1:] == [f"line {i}" for i in range(3000, 15_000)]
    batches = [c.params["logEvents"] for c in proxy.calls("PutLogEvents")[before:]
               if c.params["logGroupName"] == group]
    assert all(len(b) <= MAX_BATCH_EVENTS for b in batches) and len(batches) >= 2
    stamps = [e["timestamp"] for b in batches for e in b]
    assert stamps == sorted(stamps)
    assert {c.service for c in proxy.calls("PutLogEvents")[before:]} == {"logs"}


def test_signature_is_botocores():
    """Signature Version 4 of a CloudWatch Logs request, byte for byte as botocore makes it."""
    from botocore.auth import SigV4Auth
    from botocore.awsrequest import AWSRequest
    from botocore.credentials import Credentials as BotoCredentials

    body = json.dumps({"logGroupName": "g", "logStreamName": "c1/worker-i-1",
                       "logEvents": [{"timestamp": 1, "message": "caf\u00e9  two  spaces"}]}).encode()
    for token in (None, "session-token/with+signs="):
        for url in ("https://logs.eu-central-1.amazonaws.com/", "http://127.0.0.1:4566/"):
            headers = {"Content-Type": "application/x-amz-json-1.1", "X-Amz-Target": "Logs_20140328.PutLogEvents"}
            request = AWSRequest("POST", url, data=body, headers=dict(headers))
            SigV4Auth(BotoCredentials("AKIDEXAMPLE", "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY", token), "logs",
                      "eu-central-1").add_auth(request)
            when = datetime.datetime.strptime(request.headers["X-Amz-Date"], "%Y%m%dT%H%M%SZ")
            ours = sigv4_headers(url, headers, body, Credentials("AKIDEXAMPLE", "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY",
                                                                 token), "eu-central-1", "logs",
                                 now=when.replace(tzinfo=datetime.timezone.utc).timestamp())
            assert ours["Authorization"] == request.headers["Authorization"]
            assert ours.get("X-Amz-Security-Token") == request.headers.get("X-Amz-Security-Token")


def test_the_instance_roles_credentials_sign_requests_and_are_fetched_again_before_they_expire(aws_env, proxy):
    server = MetadataServer(Identity("i-0role", "127.9.0.6", f"{REGION}a", "m6i.large", "on-demand",
                                     "coiled-lab-instance"))
    try:
        metadata = vm.Metadata(server.url)
        credentials = InstanceRoleCredentials(metadata.get)
        assert credentials().access_key == "ASIAEMULATEDINSTANCE" and credentials().token == "emulated-session"
        group = f"role-{time.monotonic_ns()}"
        boto3.client("logs", region_name=REGION).create_log_group(logGroupName=group)
        client = CloudWatchLogs(REGION, credentials)
        client.create_log_stream(logGroupName=group, logStreamName="c1/worker-i-0role")
        with pytest.raises(client.exceptions.ResourceAlreadyExistsException):
            client.create_log_stream(logGroupName=group, logStreamName="c1/worker-i-0role")
        with pytest.raises(client.exceptions.ResourceNotFoundException):
            client.put_log_events(logGroupName="no-such-group", logStreamName="s", logEvents=[{"timestamp": 1, "message": "x"}])
        client.put_log_events(logGroupName=group, logStreamName="c1/worker-i-0role",
                              logEvents=[{"timestamp": int(time.time() * 1000), "message": "signed by the role"}])
        assert [e["message"] for e in events(group, "c1/worker-i-0role")] == ["signed by the role"]
        (put,) = [c for c in proxy.calls("PutLogEvents") if c.params["logGroupName"] == group]
        assert "Credential=ASIAEMULATEDINSTANCE/" in put.headers["Authorization"]
        assert put.headers["X-Amz-Security-Token"] == "emulated-session"
    finally:
        server.close()

    # Fetched again ten minutes before Expiration; a failed refresh keeps valid ones.
    answers = iter([3600 * 6, 300, None])

    def get(path: str):
        if path == "iam/security-credentials/":
            return "role\n"
        left = next(answers)
        if left is None:
            raise OSError("metadata service unreachable")
        expires = datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(seconds=left)
        return json.dumps({"Code": "Success", "AccessKeyId": f"ASIA{left}", "SecretAccessKey": "s", "Token": "t",
                           "Expiration": expires.strftime("%Y-%m-%dT%H:%M:%SZ")})

    credentials = InstanceRoleCredentials(get)
    assert credentials().access_key == "ASIA21600" and credentials().access_key == "ASIA21600"
    credentials._current = credentials._current._replace(expires=time.time() + 500)  # now within ten minutes
    assert credentials().access_key == "ASIA300"
    assert credentials().access_key == "ASIA300"  # the refresh failed, but these are valid for 5 minutes
    with pytest.raises(PermissionError, match="no IAM role"):
        InstanceRoleCredentials(lambda path: None)()


def test_the_client_retries_throttling_and_network_errors_then_gives_up(aws_env, proxy):
    proxy.fail("CreateLogStream", "throttle", 2)
    group = f"retry-{time.monotonic_ns()}"
    boto3.client("logs", region_name=REGION).create_log_group(logGroupName=group)
    client = CloudWatchLogs(REGION, environment_keys, max_attempts=3)
    client.create_log_stream(logGroupName=group, logStreamName="s")  # the third attempt goes through
    proxy.fail("PutLogEvents", "reset", 3)
    with pytest.raises(OSError):
        client.put_log_events(logGroupName=group, logStreamName="s", logEvents=[{"timestamp": 1, "message": "x"}])
    with pytest.raises(CloudWatchLogsError) as info:  # not retried: a 4xx that is no throttling
        CloudWatchLogs(REGION, environment_keys, max_attempts=5).put_log_events(
            logGroupName="missing", logStreamName="s", logEvents=[{"timestamp": 1, "message": "x"}])
    assert info.value.code == "ResourceNotFoundException"
    assert len([c for c in proxy.calls("PutLogEvents") if c.params["logGroupName"] == "missing"]) == 1


def test_metadata_client_speaks_imdsv2_only():
    server = MetadataServer(Identity("i-0abc", "127.9.0.5", "us-east-1b", "m6i.large", "spot", "coiled-lab-instance"))
    try:
        me = vm.Metadata(server.url).identity()
        assert me == vm.Identity("i-0abc", "127.9.0.5", "us-east-1", "us-east-1b", "m6i.large", spot=True)
        import urllib.error
        import urllib.request

        with pytest.raises(urllib.error.HTTPError) as info:  # IMDSv1: no token, no answer
            urllib.request.urlopen(f"{server.url}/latest/meta-data/instance-id", timeout=2)
        assert info.value.code == 401
        assert vm.Metadata(server.url).get("spot/instance-action") is None
    finally:
        server.close()


def test_dask_command_lines():
    me = vm.Identity("i-0abc", "127.9.0.5", "us-east-1", "us-east-1b", "m6i.large", spot=False)
    base = {"scheduler_port": 8786, "dashboard_port": 8787, "scheduler_address": "tls://127.9.0.4:8786",
            "death_timeout": 60, "nanny": True, "gpu": False}
    work = Path("/w")
    scheduler = vm.dask_command({**base, "role": "scheduler"}, me, work, "/w/venv/bin/python")
    assert scheduler[:3] == ["/w/venv/bin/python", "-m", "distributed.cli.dask_scheduler"]
    assert {"coiled_lab.bootstrap.lifetime", "coiled_lab.bootstrap.watchdog", "127.9.0.5:8787"} <= set(scheduler)
    # Every dask process stamps its lines in UTC, and imports that preload before any other.
    assert scheduler[scheduler.index("--preload") + 1] == "coiled_lab.bootstrap.utclog"
    worker = vm.dask_command({**base, "role": "worker"}, me, work)
    assert worker[2:5] == ["distributed.cli.dask_worker", "tls://127.9.0.4:8786", "--name"]
    assert worker[5] == "i-0abc" and "--nanny" in worker and "--death-timeout" in worker
    assert worker[worker.index("--preload") + 1] == worker[worker.index("--preload-nanny") + 1] == vm.UTC_PRELOAD
    gpu = vm.dask_command({**base, "role": "worker", "gpu": True}, me, work)
    assert gpu[1:5] == ["-m", "dask", "cuda", "worker"] and "i-0abc" in gpu
    assert gpu[gpu.index("--preload") + 1] == vm.UTC_PRELOAD
