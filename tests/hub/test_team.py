"""Teams on one JupyterHub, end to end (issue 21): a real hub with its proxy, two users with
Unix accounts and servers of their own, and ``coiled-lab serve`` under a third account
holding the only cloud secret.

One scenario, on SQLite and on PostgreSQL: alice creates a cluster from her server; bob
can neither see, scale, stop nor open the dashboard of it (404); an admin sees both; a
per-user limit refuses alice's third cluster while bob still creates; spoofed owners and
expired tokens are refused; the service serves nothing of its account but coiled-lab;
no user can read its secret; and killing it mid-provisioning then starting it again
adopts every cluster.
"""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import shutil
import tempfile
import time
from pathlib import Path
from typing import Iterator, Optional

import pytest
import requests
from tornado import httpclient, websocket

from coiled_lab.api import RUNTIME_FILE

from ..postgres import pg_url, postgres  # noqa: F401 - fixtures: the PostgreSQL run's database
from . import env
from .hub import SERVICE, Client, Hub, wait_until

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]

SPEC = {"backend": "local", "n_workers": 0, "idle_timeout": "10 minutes", "no_client_timeout": "10 minutes"}


@pytest.fixture(scope="module")
def built() -> tuple[Path, list[str]]:
    """The venv other users run, and the hub's proxy (both cached across runs)."""
    return env.venv(), env.proxy_command()


@pytest.fixture(params=["sqlite", "postgresql"])
def hub(request: pytest.FixtureRequest, built: tuple[Path, list[str]]) -> Iterator[Hub]:
    venv, proxy = built
    db = request.getfixturevalue("pg_url") if request.param == "postgresql" else None
    # Not under pytest's tmp dirs (0700, root's): users' servers read the sources from here
    # (never the hub's own directory, which stays root's).
    where = Path(tempfile.mkdtemp(prefix="coiled-lab-hub-"))
    where.chmod(0o755)
    src = env.sources(where)
    alice, bob, service = env.UnixUser("a"), env.UnixUser("b"), env.UnixUser("s")
    hub = Hub(where, venv, src, proxy, [alice, bob], admin=f"cltadmin{secrets.token_hex(3)}", service_user=service,
              db=db, secret="SeCrEt" + secrets.token_hex(16),
              service_config={"limits": {"users": {alice.name: {"max-clusters": 2}}}})
    hub.alice, hub.bob = alice, bob  # type: ignore[attr-defined]
    try:
        hub.start()
        yield hub
    finally:
        hub.stop()
        for user in (alice, bob, service):
            user.remove()
        if not os.environ.get("COILED_LAB_HUB_KEEP"):  # set it to read the hub's and the service's logs
            shutil.rmtree(where, ignore_errors=True)


def events_socket(base: str, token: str, cluster: str) -> tuple[int, Optional[dict]]:
    """The status a user's server answers an events socket for ``cluster`` with (101:
    opened), and the first event it then forwards (the replay from ``after=0``)."""
    async def connect() -> tuple[int, Optional[dict]]:
        url = base.replace("http", "ws", 1) + f"/coiled-lab/api/events?cluster={cluster}&after=0"
        try:
            ws = await websocket.websocket_connect(httpclient.HTTPRequest(
                url, headers={"Authorization": f"token {token}"}))
        except httpclient.HTTPClientError as exc:
            return exc.code, None
        first = await asyncio.wait_for(ws.read_message(), 30)
        ws.close()
        return 101, json.loads(first) if first else None

    return asyncio.run(connect())


def test_team_on_jupyterhub(hub: Hub) -> None:
    alice, bob = hub.alice.name, hub.bob.name  # type: ignore[attr-defined]
    hub.start_server(alice)
    hub.start_server(bob)
    hub.wait_server(alice)
    hub.wait_server(bob)
    tokens = {name: hub.token(name) for name in (alice, bob, hub.admin)}
    as_alice = Client(f"{hub.url}/user/{alice}", tokens[alice])
    as_bob = Client(f"{hub.url}/user/{bob}", tokens[bob])
    service_url = f"{hub.url}/services/{SERVICE}"
    as_admin = Client(service_url, tokens[hub.admin])
    api = "coiled-lab/api/clusters"

    # -- alice's cluster, through her own server ------------------------------------------
    code, mine = as_alice("POST", api, {**SPEC, "name": "analysis"})
    assert code == 201, mine
    assert mine["owner"] == alice
    cid = mine["id"]
    wait_until(lambda: as_alice("GET", f"{api}/{cid}")[1]["status"] == "running", 90, "alice's cluster")

    # A spoofed owner is refused, naming the field.
    code, refused = as_alice("POST", api, {**SPEC, "owner": bob})
    assert code == 400 and refused["field"] == "owner", refused

    # -- bob sees nothing of it ------------------------------------------------------------
    code, listed = as_bob("GET", api)
    assert code == 200 and cid not in [c["id"] for c in listed["clusters"]]
    for method, path, body in [("GET", f"{api}/{cid}", None), ("GET", f"{api}/analysis", None),
                               ("PATCH", f"{api}/{cid}", {"n_workers": 1}), ("DELETE", f"{api}/{cid}", None),
                               ("GET", f"{api}/{cid}/connection", None), ("GET", f"{api}/{cid}/logs", None),
                               ("GET", f"coiled-lab/clusters/{cid}/dashboard/status", None)]:
        code, reply = as_bob(method, path, body)
        assert code == 404, (method, path, code, reply)
    assert events_socket(f"{hub.url}/user/{bob}", tokens[bob], cid) == (404, None)
    code, first = events_socket(f"{hub.url}/user/{alice}", tokens[alice], cid)
    assert code == 101 and first is not None and first["cluster_id"] == cid, first

    # Alice opens her dashboard: her server's link redirects under her own server's prefix.
    hop = requests.get(f"{hub.url}/user/{alice}/coiled-lab/clusters/{cid}/dashboard/status", timeout=30,
                       allow_redirects=False, headers={"Authorization": f"token {tokens[alice]}"})
    assert hop.status_code == 302, hop.text
    assert hop.headers["Location"].startswith(f"/user/{alice}/coiled-lab/dashboards/{cid}/"), hop.headers
    page = requests.get(f"{hub.url}{hop.headers['Location']}", timeout=30)  # the key is the only credential
    assert page.status_code == 200 and "sandbox" in page.headers["Content-Security-Policy"]

    # -- limits: alice's third live cluster is refused, bob still creates ------------------
    code, second = as_alice("POST", api, SPEC)
    assert code == 201, second
    code, third = as_alice("POST", api, SPEC)
    assert code == 403 and third["code"] == "limit", third
    code, bobs = as_bob("POST", api, SPEC)
    assert code == 201, bobs

    # -- the admin sees everybody's; the audit log and metrics are theirs alone --------------
    code, everything = as_admin("GET", api)
    owners = {c["id"]: c["owner"] for c in everything["clusters"]}
    assert owners[cid] == alice and owners[bobs["id"]] == bob
    code, audit = as_admin("GET", "coiled-lab/api/audit")
    assert code == 200 and {(r["actor"], r["action"]) for r in audit["audit"]} >= {(alice, "create"), (bob, "create")}
    assert as_alice("GET", "coiled-lab/api/audit")[0] == 403
    # Whom each page acts for (the lab shows admins the activity log and owners from it).
    assert as_alice("GET", "coiled-lab/api/me") == (200, {"name": alice, "admin": False, "team": True})
    assert as_admin("GET", "coiled-lab/api/me") == (200, {"name": hub.admin, "admin": True, "team": True})
    code, metrics = as_admin("GET", "metrics")
    assert code == 200 and 'coiled_lab_clusters{state="running"}' in metrics
    assert Client(service_url, tokens[alice])("GET", "metrics")[0] == 403
    health = requests.get(f"{service_url}/health", timeout=10).json()
    assert health["store"] == "ok" and health["role"] == "leader"

    # The service's cloud credentials: admins only (alice may neither read nor replace them).
    assert as_alice("PUT", "coiled-lab/api/credentials", {"provider": "aws", "access_key_id": "AKIAEXAMPLEEXAMPLE12",
                                                          "secret_access_key": "x"})[0] == 403
    code, status = as_admin("PUT", "coiled-lab/api/credentials", {
        "provider": "aws", "access_key_id": "AKIAIOSFODNN7EXAMPLE", "secret_access_key": hub.secret})
    assert code == 200, status

    # Nothing of the service account but coiled-lab, whoever asks.
    for path in ("api/kernels", "api/contents", "api/terminals", "terminals/1", "api/sessions", "files/state/x",
                 "api/me", "tree", "lab"):
        code, _ = as_admin("GET", path)
        assert code in (403, 404), (path, code)

    # An expired token is refused by the service and by alice's server.
    short = hub.token(alice, expires_in=1)
    time.sleep(2.5)
    assert Client(service_url, short)("GET", api)[0] == 403
    assert Client(f"{hub.url}/user/{alice}", short)("GET", api)[0] in (302, 403)

    # -- the secret: in the service's hands only --------------------------------------------
    users = {u.name: u for u in (hub.alice, hub.bob)}  # type: ignore[attr-defined]
    server_pids = [p.pid for p in users[alice].processes() if "jupyterhub-singleuser" in " ".join(p.cmdline())]
    assert server_pids
    for pid in server_pids:  # what alice's kernels and terminals inherit
        environ = Path(f"/proc/{pid}/environ").read_bytes()
        assert hub.secret.encode() not in environ and b"AWS_SECRET_ACCESS_KEY" not in environ
    # The kernel token (what the magic, widgets and the CLI in her terminal use, published
    # to kernels and in her runtime file) works through her server, for her clusters only.
    runtime = json.loads(next(users[alice].home.rglob(RUNTIME_FILE)).read_text())
    seen = requests.get(f"{runtime['url'].rstrip('/')}/clusters", timeout=30,
                        headers={"Authorization": f"coiled-lab {runtime['token']}"})
    assert seen.status_code == 200, (runtime["url"], seen.status_code, seen.text[:500])
    seen = seen.json()
    assert {c["owner"] for c in seen["clusters"]} == {alice}
    service_pid = hub.service_proc.pid  # type: ignore[union-attr]
    as_user = users[alice]
    assert as_user.run("cat", f"/proc/{service_pid}/environ").returncode != 0
    assert as_user.run("cat", str(hub.service_state / "credentials.json")).returncode != 0
    assert as_user.run("ls", str(hub.service_state)).returncode != 0
    found = as_user.run("grep", "-rl", "--", hub.secret, str(as_user.home), str(hub.where), "/tmp")
    assert found.stdout == "", found.stdout
    assert hub.secret in (hub.service_state / "credentials.json").read_text()  # it is there, for the service

    # -- killed mid-provisioning, started again: every cluster is adopted ---------------------
    code, fresh = as_bob("POST", api, SPEC)
    assert code == 201, fresh
    hub.kill_service()
    hub.start_service()
    wait_until(lambda: as_bob("GET", f"{api}/{fresh['id']}")[1]["status"] == "running", 90, "the adopted cluster")
    code, again = as_alice("GET", f"{api}/{cid}")
    assert code == 200 and again["status"] == "running" and again["scheduler_address"] == \
        as_admin("GET", f"{api}/{cid}")[1]["scheduler_address"]
    assert as_alice("GET", api)[1]["clusters"] and all(
        c["owner"] == alice for c in as_alice("GET", api)[1]["clusters"])

    # Done: the clusters stop (their processes are the service account's).
    for client, cluster in ((as_alice, cid), (as_alice, second["id"]), (as_bob, bobs["id"]), (as_bob, fresh["id"])):
        assert client("DELETE", f"{api}/{cluster}")[0] == 202
    wait_until(lambda: all(c["status"] == "stopped" for c in as_admin("GET", api)[1]["clusters"]), 60,
               "every cluster to stop")

