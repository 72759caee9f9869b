"""``python_version`` and ``software`` through the REST API: a value the VMs cannot use is a
400 naming the field, before any request to AWS (moto behind a counting proxy) and before
any record; a good one passes these checks (and meets the next: here a limit of 0 live
clusters, 403, which asks AWS nothing either)."""

from __future__ import annotations

import logging

import dask.config
import pytest

from coiled_lab.spec import SUPPORTED_PYTHONS

from ..aws.proxy import AWSProxy

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def counted_aws():
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.WARNING)
    moto = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    moto.start()
    host, port = moto.get_host_and_port()
    proxy = AWSProxy(f"http://{host}:{port}").start()
    yield proxy
    proxy.close()
    moto.stop()


@pytest.fixture
def jp_server_config(jp_server_config, counted_aws, monkeypatch):
    for key, value in {
        "AWS_ACCESS_KEY_ID": "AKIASOFTWARETEST0001", "AWS_SECRET_ACCESS_KEY": "software-secret",
        "AWS_DEFAULT_REGION": "us-east-1", "AWS_ENDPOINT_URL": counted_aws.url, "AWS_CONFIG_FILE": "/dev/null",
        "AWS_SHARED_CREDENTIALS_FILE": "/dev/null", "AWS_EC2_METADATA_DISABLED": "true",
    }.items():
        monkeypatch.setenv(key, value)
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    monkeypatch.delenv("AWS_SESSION_TOKEN", raising=False)
    return jp_server_config


def test_what_the_vms_cannot_install_is_a_400_with_no_aws_call(service, api, jp_asyncio_loop, counted_aws,
                                                                tmp_path, monkeypatch):
    run = jp_asyncio_loop.run_until_complete
    good = tmp_path / "good.txt"
    good.write_text("pandas==2.2.3\n")
    bad = tmp_path / "requirements.txt"
    bad.write_text("pandas==2.2.3\n\nnumpy>=>2\n")
    cases = [
        ({"software": str(bad)}, "software", f"software: {bad}, line 3: 'numpy>=>2' is not allowed: "),
        ({"software": str(tmp_path / "missing.txt")}, "software", "no such file"),
        ({"software": "ghcr.io/me/image:1"}, "software", "container images are not supported"),
        ({"python_version": "3.9"}, "python_version", ", ".join(SUPPORTED_PYTHONS)),
        ({"python_version": 3.1}, "python_version", "3.10 reads as 3.1"),
    ]
    with dask.config.set({"coiled-lab.limits.max-clusters": 0}):
        for fields, field, says in cases:
            for path in ("clusters", "estimate"):
                before = len(counted_aws.calls())
                body = {"backend": "aws", "package_sync": False, **fields}
                code, reply = run(api("POST", "coiled-lab/api", path, body=body))
                assert (code, reply["field"]) == (400, field), (path, fields, reply)
                assert says in reply["error"], (path, fields, reply)
                assert len(counted_aws.calls()) == before, (path, fields, counted_aws.calls()[before:])
        # The environment package sync sends: checked field by field, before any record or AWS call.
        for environment, field, says in [({"python": "2.7; rm -rf /", "platform": "linux-x86_64"},
                                          "environment.python", "is not allowed"),
                                         ("f" * 32, "environment", "no environment of that hash")]:
            before = len(counted_aws.calls())
            body = {"backend": "aws", "environment": environment}
            code, reply = run(api("POST", "coiled-lab/api", "clusters", body=body))
            assert (code, reply["field"]) == (400, field) and says in reply["error"], reply
            assert len(counted_aws.calls()) == before
        # Left out, python_version is the server's Python: one the VMs cannot run is refused too.
        with monkeypatch.context() as patched:
            patched.setattr("coiled_lab.spec.running_python", lambda: "3.9")
            code, reply = run(api("POST", "coiled-lab/api", "clusters", body={"backend": "aws"}))
            assert (code, reply["field"]) == (400, "python_version") and "(3.9)" in reply["error"]
        # A good file and a supported Python pass these checks; the limit refuses next.
        before = len(counted_aws.calls())
        body = {"backend": "aws", "package_sync": False, "software": str(good), "python_version": "3.12"}
        code, reply = run(api("POST", "coiled-lab/api", "clusters", body=body))
        assert code == 403 and reply.get("limit") == "max-clusters", reply
        assert len(counted_aws.calls()) == before
    assert not run(service.manager()).store.list_clusters()
    code, fields = run(api("GET", "coiled-lab/api", "defaults"))  # what forms build their fields from
    assert code == 200 and "python_version" in {f["name"] for f in fields["fields"]}
