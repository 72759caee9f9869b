"""A real Jupyter server on a damaged or unwritable store: every coiled-lab route answers
503 JSON naming the store's file and the fix, and once the cause is gone (the backup
restored by ``coiled-lab store restore``, the directory writable again) the same server
serves the store with its next request, no restart (issue 18, item 4). On a full disk a
write is refused the same way while reads go on."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path

import pytest
from traitlets.config import Config

from ..test_store_durability import STORE, damage, fill, populate
from coiled_lab_server.dashboard import dashboard_key

from .test_auth import KEYED, ROUTES, WEBSOCKETS, ws_code


@pytest.fixture
def mounts():
    """Mount points made by a test, unmounted (lazily: the server may hold files) afterwards."""
    made: list[Path] = []
    yield made
    for point in reversed(made):
        subprocess.run(["umount", "-l", str(point)], capture_output=True)


def mount(mounts: list[Path], *args: str) -> None:
    if os.geteuid() != 0:
        pytest.skip("mounting needs root")
    subprocess.run(["mount", *args], check=True)
    mounts.append(Path(args[-1]))


@pytest.fixture
def cause(request, state_dir: Path, mounts) -> str:
    """The store's history, then what happened to it while the server was stopped."""
    how = request.param
    if how == "full disk":
        mount(mounts, "-t", "tmpfs", "-o", "size=1m,mode=0700", "tmpfs", str(state_dir))
    populate(state_dir, n=3)
    if how == "read-only":
        mount(mounts, "--bind", str(state_dir), str(state_dir))
        subprocess.run(["mount", "-o", "remount,bind,ro", str(state_dir)], check=True)
    elif how != "full disk":
        damage(state_dir, how)
    return how


@pytest.fixture
def jp_server_config(cause: str, state_dir: Path) -> Config:
    """The server starts once ``cause`` has happened."""
    return Config({"ServerApp": {"jpserver_extensions": {"coiled_lab_server": True}}})


@pytest.mark.parametrize("cause", ["truncated", "header", "read-only"], indirect=True)
async def test_every_route_answers_503_naming_the_store_until_it_is_restored(
        cause, service, api, jp_ws_fetch, jp_serverapp, state_dir, mounts):
    store = str(state_dir / STORE)
    fix = "writable" if cause == "read-only" else "coiled-lab store restore"
    key = dashboard_key(jp_serverapp.web_app.settings["cookie_secret"], "x")  # past the key, the store
    for method, parts, body in ROUTES:
        parts = tuple(key if p == "not-its-key" else p for p in parts) if parts[0] == KEYED else parts
        code, reply = await api(method, *parts, body=body)
        assert code == 503, (method, parts, code, reply)
        assert store in reply["error"] and fix in reply["error"] and "\n" not in reply["error"], reply
    for parts in WEBSOCKETS:
        assert await ws_code(jp_ws_fetch, parts, {}) == 503, parts

    if cause == "read-only":
        subprocess.run(["umount", str(state_dir)], check=True)
        mounts.remove(state_dir)
    else:
        restored = await asyncio.to_thread(
            subprocess.run, [sys.executable, "-m", "coiled_lab.cli", "store", "restore"],
            capture_output=True, text=True, env=os.environ)
        assert restored.returncode == 0, restored.stderr
    code, reply = await api("GET", "coiled-lab/api/clusters")
    assert code == 200, reply
    assert [c["name"] for c in reply["clusters"]] == ["history-0", "history-1", "history-2"]


@pytest.mark.parametrize("cause", ["full disk"], indirect=True)
async def test_a_full_disk_refuses_writes_with_503_and_reads_go_on(cause, service, api, state_dir):
    code, reply = await api("GET", "coiled-lab/api/clusters")
    assert code == 200 and len(reply["clusters"]) == 3
    filler = fill(state_dir)
    code, reply = await api("POST", "coiled-lab/api/clusters", body={"backend": "local", "n_workers": 0})
    assert code == 503, reply
    assert str(state_dir / STORE) in reply["error"] and "full" in reply["error"], reply
    code, reply = await api("GET", "coiled-lab/api/clusters")
    assert code == 200 and len(reply["clusters"]) == 3

    filler.unlink()
    code, reply = await api("POST", "coiled-lab/api/clusters", body={"backend": "local", "n_workers": 0})
    assert code == 201, reply
    code, reply = await api("DELETE", "coiled-lab/api/clusters", reply["id"])
    assert code == 202, reply
