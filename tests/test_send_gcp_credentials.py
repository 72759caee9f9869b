"""The kernel's own Google application-default credentials reach the workers as OAuth
access tokens, and ``google.auth.default()`` on a worker answers with them.

The kernel is this test process, its ADC a service-account key file whose token endpoint
is tests/gcptoken.py on 127.0.0.1 (so ``google.auth.default()`` and ``refresh()`` run
unchanged); the workers are real local dask processes, which inherit no Google variable.
"""

from __future__ import annotations

import os
import sys
import time

import cloudpickle
import dask.config
import pytest
from distributed import Client

from coiled_lab import Cluster
from coiled_lab.errors import ClusterError
from coiled_lab.gcp_credentials import EXPIRY_ENV, PROJECT_ENV, TOKEN_ENV, GCPTokenPlugin, access_token

from .conftest import wait_for
from .gcptoken import ACCOUNT, BUCKET, CONTENT, OBJECT, PROJECT, TokenEndpoint
from .test_send_credentials import assert_no_secret_leaked

cloudpickle.register_pickle_by_value(sys.modules[__name__])  # the workers cannot import tests/


@pytest.fixture
def google(monkeypatch, tmp_path):
    """The kernel's ADC: a key file whose tokens come from the local endpoint; no metadata server."""

    def start(lifetime: int = 3600) -> TokenEndpoint:
        endpoint = TokenEndpoint(lifetime)
        started.append(endpoint)
        monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", str(endpoint.key_file(tmp_path / "adc.json")))
        return endpoint

    started: list[TokenEndpoint] = []
    monkeypatch.setenv("NO_GCE_CHECK", "True")  # this machine is no GCE VM: google-auth must not ask
    # After a refresh google-auth looks up a "regional access boundary" at
    # iamcredentials.googleapis.com in the background; off, so no test reaches for the internet.
    monkeypatch.setattr("google.oauth2.service_account.Credentials._is_regional_access_boundary_lookup_required",
                        lambda self: False)
    for name in (TOKEN_ENV, EXPIRY_ENV, PROJECT_ENV, "GOOGLE_APPLICATION_CREDENTIALS"):
        monkeypatch.delenv(name, raising=False)
    yield start
    for endpoint in started:
        endpoint.close()


def google_environment() -> dict:
    return {name: os.environ.get(name) for name in (TOKEN_ENV, EXPIRY_ENV, PROJECT_ENV)}


def call_google(url: str, keep: bool = False) -> dict:
    """What user code on a worker does: application-default credentials and an authorized
    request to a Google API (as google-cloud clients and gcsfs do). ``keep``: reuse one
    long-lived session on this worker, made at the first call."""
    import google.auth
    from distributed import get_worker
    from google.auth.transport.requests import AuthorizedSession

    worker = get_worker() if keep else None  # keep: from a task
    session = getattr(worker, "_google_session", None)
    if session is None:
        credentials, project = google.auth.default(scopes=["https://www.googleapis.com/auth/cloud-platform"])
        session = AuthorizedSession(credentials)
        session.project = project
        if keep:
            worker._google_session = session
    reply = session.get(f"{url}/v1/whoami", timeout=10)
    return {"status": reply.status_code, "body": reply.json(), "project": session.project,
            "credentials": type(session.credentials).__name__}


def read_with_gcsfs(url: str) -> dict:
    """gcsfs on a worker, credentials left to it (``google.auth.default()``)."""
    # Its experimental bucket-type probe speaks gRPC, which the fake does not: off.
    os.environ["GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT"] = "false"
    import gcsfs

    fs = gcsfs.GCSFileSystem(endpoint_url=url, skip_instance_cache=True)
    return {"listed": fs.ls(BUCKET), "content": fs.cat(f"{BUCKET}/{OBJECT}"), "project": fs.project}


@pytest.mark.slow
def test_workers_get_the_kernels_access_token_and_so_do_workers_added_later(control, state_dir, google):
    endpoint = google()
    with Cluster(n_workers=1, control=control) as cluster, Client(cluster) as client:
        assert all(v[TOKEN_ENV] is None for v in client.run(google_environment).values())
        cluster.send_credentials(provider="gcp")
        [sent] = endpoint.issued  # one token, asked by the kernel
        assert sent["account"] == ACCOUNT and "cloud-platform" in sent["scope"]
        seen = client.submit(google_environment, pure=False).result()
        assert seen[TOKEN_ENV] == sent["token"] and seen[PROJECT_ENV] == PROJECT
        assert float(seen[EXPIRY_ENV]) == pytest.approx(sent["expires"], abs=5)

        answer = client.submit(call_google, endpoint.url, pure=False).result()
        assert answer == {"status": 200, "body": {"account": ACCOUNT}, "project": PROJECT, "credentials": "SentToken"}
        assert endpoint.requests[-1] == {"path": "/v1/whoami", "token": sent["token"]}
        read = client.submit(read_with_gcsfs, endpoint.url, pure=False).result()
        assert read == {"listed": [f"{BUCKET}/{OBJECT}"], "content": CONTENT, "project": PROJECT}
        assert endpoint.requests[-1] == {"path": f"/download/storage/v1/b/{BUCKET}/o/{OBJECT}", "token": sent["token"]}
        assert len(endpoint.issued) == 1  # the worker used the sent token; it could mint none itself

        cluster.scale(2)
        client.wait_for_workers(2, timeout=60)
        answers = client.run(call_google, endpoint.url)
        assert len(answers) == 2 and {a["status"] for a in answers.values()} == {200}
        assert {v[TOKEN_ENV] for v in client.run(google_environment).values()} == {sent["token"]}
        assert len(endpoint.issued) == 1  # a new worker gets the registered token; no new one asked

        assert_no_secret_leaked(state_dir, [sent["token"], endpoint.private_pem.splitlines()[1]])


@pytest.mark.slow
def test_the_option_sends_a_token_at_start_and_a_fresh_one_before_it_expires(control, state_dir, google):
    # Tokens that last 12 s, sent again at a quarter of that: every 3 s.
    endpoint = google(lifetime=12)
    with dask.config.set({"coiled-lab.credentials.refresh-at": 0.25}):
        with Cluster(n_workers=1, control=control, send_credentials="gcp") as cluster, Client(cluster) as client:
            first = endpoint.issued[0]
            kept = client.submit(call_google, endpoint.url, True, pure=False).result()  # a long-lived session
            assert kept["status"] == 200 and endpoint.requests[-1]["token"] == first["token"]
            wait_for(lambda: len(endpoint.issued) >= 2, timeout=30, interval=0.2, what="a fresh token")
            assert endpoint.issued[1]["expires"] - first["expires"] < 12, "sent again only after the first expired"
            # Past the first token's expiry, the session made with it still works: on every
            # request it reads the newest token the kernel sent.
            wait_for(lambda: time.time() > first["expires"] + 1, timeout=30, interval=0.2, what="the first expiry")
            later = client.submit(call_google, endpoint.url, True, pure=False).result()
            assert later["status"] == 200
            assert endpoint.requests[-1]["token"] in {t["token"] for t in endpoint.issued[1:]}
    assert_no_secret_leaked(state_dir, [t["token"] for t in endpoint.issued])


def test_the_token_comes_from_the_kernels_own_credentials_only(google, monkeypatch, tmp_path):
    from google.auth import compute_engine

    endpoint = google()
    plugin = access_token()
    assert plugin._token == endpoint.issued[0]["token"] and plugin.project == PROJECT
    assert plugin.expiration == pytest.approx(endpoint.issued[0]["expires"], abs=5)
    assert plugin._token not in repr(plugin)

    monkeypatch.setattr("google.auth.default", lambda scopes=None, **kw: (compute_engine.Credentials(), "machine"))
    with pytest.raises(ClusterError, match="machine's own service account"):
        access_token()


def test_no_application_default_credentials_is_a_clear_error(google, monkeypatch, tmp_path):
    monkeypatch.setenv("CLOUDSDK_CONFIG", str(tmp_path / "no-gcloud"))
    monkeypatch.setenv("HOME", str(tmp_path))
    with pytest.raises(ClusterError, match="no Google application-default credentials"):
        access_token()


def test_a_worker_never_uses_an_expired_token(monkeypatch):
    """SentToken refuses to go on with a token past its expiry: a clear error, not a 401."""
    import google.auth
    import google.auth.exceptions
    from google.auth.transport.requests import Request

    monkeypatch.setattr(google.auth, "default", google.auth.default)  # the hook and variables go after the test
    for name in (TOKEN_ENV, EXPIRY_ENV, PROJECT_ENV):
        monkeypatch.setenv(name, "")
    GCPTokenPlugin("ya29.expired", time.time() - 1, "p").setup()
    credentials, project = google.auth.default()
    assert project == "p" and credentials.token == "ya29.expired" and not credentials.valid
    with pytest.raises(google.auth.exceptions.RefreshError, match="send_credentials"):
        credentials.before_request(Request(), "GET", "https://storage.googleapis.com/", {})
    GCPTokenPlugin("ya29.fresh", time.time() + 3600, "p").setup()  # a refresh arrives
    assert credentials.token == "ya29.fresh" and credentials.valid


def test_an_unknown_provider_is_refused():
    import asyncio

    from coiled_lab import credentials
    from coiled_lab.spec import ClusterSpecError

    with pytest.raises(ClusterSpecError, match="provider: 'azure' is not one of aws, gcp") as err:
        asyncio.run(credentials.send(None, "azure"))
    assert err.value.field == "provider"


def test_an_unknown_provider_for_the_option_is_refused_before_anything_starts(control):
    from coiled_lab.spec import ClusterSpecError

    with pytest.raises(ClusterSpecError, match="send_credentials: 'azure'") as err:
        Cluster(n_workers=1, control=control, send_credentials="azure")
    assert err.value.field == "send_credentials" and control.run(control.list()) == []
