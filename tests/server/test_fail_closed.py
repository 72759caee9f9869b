"""A real ``jupyter lab`` whose coiled-lab extension cannot start (its state dir would be
under a regular file) fails closed: every coiled-lab route answers 503 JSON naming why,
kernels it starts inherit no cloud secret, and SIGTERM stops it.

And a healthy one shows what SECURITY.md says a kernel of the same Unix user can and
cannot reach: not the secrets through its environment or the coiled-lab API, but the
server's starting environment (/proc), the stored credentials file and the Jupyter
token file, which no extension can hide from its own user.
"""

from __future__ import annotations

import http.client
import json
import os
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import psutil
import pytest
from jupyter_client import BlockingKernelClient

from ..conftest import wait_for
from ..ui.lab import JupyterLab

pytestmark = pytest.mark.slow

SECRET = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYFAILCLOSED"
STORED = "stored-secret-K7MDENG/bPxRfiCYSTORED00"
SERVER_ENV = {"AWS_ACCESS_KEY_ID": "AKIAFAILCLOSED000001", "AWS_SECRET_ACCESS_KEY": SECRET}


def request(lab: JupyterLab, method: str, path: str, token: str | None = None, body: Any = None) -> tuple[int, str]:
    """(status, body text): a broken extension may answer HTML, which must fail an assertion, not JSON parsing."""
    conn = http.client.HTTPConnection("127.0.0.1", lab.port, timeout=30)
    try:
        headers = {"Authorization": f"token {token}"} if token else {}
        conn.request(method, "/" + path, body=json.dumps(body) if body is not None else None, headers=headers)
        response = conn.getresponse()
        return response.status, response.read().decode(errors="replace")
    finally:
        conn.close()


def start(root: Path, state_dir: Path, **extra: str) -> JupyterLab:
    lab = JupyterLab(root)
    lab.state_dir = state_dir
    with pytest.MonkeyPatch.context() as env:  # what the server is started with, and only it
        for key, value in {**SERVER_ENV, **extra}.items():
            env.setenv(key, value)
        lab.start(ready="api/status")
    return lab


@pytest.fixture(scope="module")
def broken(tmp_path_factory) -> JupyterLab:
    root = tmp_path_factory.mktemp("broken")
    (root / "not-a-directory").write_text("")
    lab = start(root, root / "not-a-directory" / "state")
    yield lab
    lab.close()


def test_every_coiled_lab_route_answers_503_naming_why(broken):
    for method, path, body in [
        ("GET", "coiled-lab/api/clusters", None),
        ("POST", "coiled-lab/api/clusters", {"n_workers": 1}),
        ("PUT", "coiled-lab/api/credentials", {"provider": "aws"}),
        ("DELETE", "coiled-lab/api/clusters/some-id", None),
        ("GET", "coiled-lab/clusters/some-id/dashboard/status", None),
    ]:
        code, text = request(broken, method, path, broken.token, body)
        assert code == 503, (method, path, code, text[:200])
        reply = json.loads(text)
        assert "not a directory" in reply["error"].lower() and str(broken.state_dir.parent) in reply["error"], reply
        assert "restart" in reply["error"] and reply["field"] is None
        assert request(broken, method, path)[0] == 403  # the reason is for authenticated users only


def test_kernels_of_a_broken_server_inherit_no_secret(broken):
    environ = kernel_environ(broken)
    assert SECRET not in environ and "AWS_SECRET_ACCESS_KEY" not in environ
    assert "COILED_LAB_API_URL" not in environ  # no API to publish: kernels run clusters in-process


def test_kernels_inherit_no_secret_even_when_the_extension_cannot_be_imported(tmp_path):
    """A dependency that fails to import (here jupyter-server-proxy, shadowed by a broken
    one) stops the extension before any of its code runs, but after the secrets left."""
    broken_dependency = tmp_path / "site" / "jupyter_server_proxy"
    broken_dependency.mkdir(parents=True)
    (broken_dependency / "__init__.py").write_text("raise ImportError('broken on purpose by the test')\n")
    path = os.pathsep.join(p for p in (str(tmp_path / "site"), os.environ.get("PYTHONPATH")) if p)
    lab = start(tmp_path, tmp_path / "state", PYTHONPATH=path)
    try:
        assert request(lab, "GET", "coiled-lab/api/clusters", lab.token)[0] == 404  # not loaded at all
        environ = kernel_environ(lab)
    finally:
        lab.close()
    assert "broken on purpose" in lab.log_path.read_text()
    assert SECRET not in environ and "AWS_SECRET_ACCESS_KEY" not in environ


def kernel_environ(lab: JupyterLab) -> str:
    """The starting environment of a kernel the server starts (then shut down)."""
    code, text = request(lab, "POST", "api/kernels", lab.token, {"name": "python3"})
    assert code == 201, text
    kernel = wait_for(lambda: kernel_process(lab), timeout=60, what="the kernel process")
    try:
        return Path(f"/proc/{kernel.pid}/environ").read_bytes().decode(errors="replace")
    finally:
        request(lab, "DELETE", f"api/kernels/{json.loads(text)['id']}", lab.token)


def test_sigterm_stops_a_broken_server(broken):
    broken.proc.send_signal(signal.SIGTERM)
    try:
        assert broken.proc.wait(30) is not None
    except subprocess.TimeoutExpired:
        pytest.fail("the server did not exit within 30 s of SIGTERM")


def kernel_process(lab: JupyterLab) -> psutil.Process | None:
    for child in psutil.Process(lab.proc.pid).children(recursive=True):
        try:
            if "ipykernel_launcher" in " ".join(child.cmdline()):
                return child
        except psutil.Error:
            continue
    return None


KERNEL_LOOKS = """
import json, os, urllib.error, urllib.request
from pathlib import Path
secret, stored, server_pid, runtime = {secret!r}, {stored!r}, {server_pid}, {runtime!r}
def get(path, token):
    request = urllib.request.Request(path, headers={{"Authorization": token}})
    try:
        with urllib.request.urlopen(request) as answer:
            return answer.status, answer.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, ""
api, kernel_token = os.environ["COILED_LAB_API_URL"], "coiled-lab " + os.environ["COILED_LAB_API_TOKEN"]
base = api.split("coiled-lab/api/")[0]
status, body = get(api + "credentials", kernel_token)
files = [json.loads(p.read_text()) for p in Path(runtime).glob("jpserver-*.json")]
print(json.dumps({{
    "own environment": secret in json.dumps(dict(os.environ)),
    "coiled-lab API": status == 200 and secret not in body and stored not in body,
    "Jupyter API with the kernel token": get(base + "api/contents", kernel_token)[0],
    "server's starting environment": secret in Path(f"/proc/{{server_pid}}/environ").read_bytes().decode("latin-1"),
    "stored credentials file": stored in Path({credentials!r}).read_text(),
    "Jupyter token file": any(get(base + "api/contents", "token " + f["token"])[0] == 200 for f in files),
}}))
"""


def test_a_same_user_kernel_reaches_what_security_md_says(tmp_path):
    lab = start(tmp_path, tmp_path / "state")
    try:
        code, text = request(lab, "PUT", "coiled-lab/api/credentials", lab.token,
                             {"provider": "aws", "access_key_id": "AKIASTOREDSTORED0001", "secret_access_key": STORED})
        assert code == 200, text
        code, text = request(lab, "POST", "api/kernels", lab.token, {"name": "python3"})
        assert code == 201, text
        connection = tmp_path / "runtime" / f"kernel-{json.loads(text)['id']}.json"
        wait_for(connection.exists, timeout=60, what="the kernel's connection file")
        code = KERNEL_LOOKS.format(secret=SECRET, stored=STORED, server_pid=lab.proc.pid,
                                   runtime=str(tmp_path / "runtime"),
                                   credentials=str(lab.state_dir / "credentials.json"))
        seen = json.loads(run_in_kernel(connection, code))
    finally:
        lab.close()
    assert seen == {
        # Cannot: the server took the secrets out of the environment kernels inherit, and
        # the coiled-lab API shows status only; the kernel token opens nothing else.
        "own environment": False,
        "coiled-lab API": True,
        "Jupyter API with the kernel token": 403,
        # Can, as any process of the same user: SECURITY.md, attacker 3.
        "server's starting environment": True,
        "stored credentials file": True,
        "Jupyter token file": True,
    }


def run_in_kernel(connection: Path, code: str) -> str:
    client = BlockingKernelClient()
    client.load_connection_file(str(connection))
    client.start_channels()
    try:
        client.wait_for_ready(timeout=60)
        out: list[str] = []

        def keep(message: dict) -> None:
            if message["header"]["msg_type"] == "stream":
                out.append(message["content"]["text"])
            elif message["header"]["msg_type"] == "error":
                out.append("\n".join(message["content"]["traceback"]))

        deadline = time.monotonic() + 60
        reply = client.execute_interactive(code, output_hook=keep, timeout=deadline - time.monotonic())
        assert reply["content"]["status"] == "ok", "".join(out)
        return "".join(out)
    finally:
        client.stop_channels()
