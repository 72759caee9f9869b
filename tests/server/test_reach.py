"""``GET /coiled-lab/api/reach``: who ``allow_ingress_from: me`` is from this server, for
the form's hint; an echo that does not answer is told as the fix, not as a failure."""

from __future__ import annotations

import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import dask.config
import pytest


class Echo(BaseHTTPRequestHandler):
    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        body = f"{self.client_address[0]}\n".encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
        self.server.asked += 1  # type: ignore[attr-defined]

    def log_message(self, *args) -> None:
        pass


@pytest.fixture
def echo():
    server = ThreadingHTTPServer(("127.0.0.1", 0), Echo)
    server.asked = 0  # type: ignore[attr-defined]
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield server
    server.shutdown()
    server.server_close()


async def test_me_as_the_echo_sees_this_server(service, api, echo, monkeypatch):
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")  # this machine is no EC2 instance
    url = f"http://127.0.0.1:{echo.server_address[1]}/"
    with dask.config.set({"coiled-lab.address-echo": url}):
        code, first = await api("GET", "coiled-lab/api/reach", params={"backend": "aws"})
        code_again, again = await api("GET", "coiled-lab/api/reach", params={"backend": "aws"})
    assert code == code_again == 200
    assert first == again == {"public_address": "127.0.0.1", "error": None, "echo": url, "network": None,
                              "private_address": None}
    assert echo.asked == 1  # learned once, then kept

    with dask.config.set({"coiled-lab.address-echo": "http://127.0.0.1:9/"}):  # nothing listens there
        code, told = await api("GET", "coiled-lab/api/reach", params={"backend": "aws"})
    assert code == 200 and told["public_address"] is None
    assert "give allow_ingress_from as a CIDR" in told["error"]

    code, refused = await api("GET", "coiled-lab/api/reach", params={"backend": "local"})
    assert code == 400 and refused["field"] == "backend"


@pytest.mark.parametrize("fields, code, field", [
    ({"allow_ingress_from": "everyone"}, 400, "allow_ingress_from"),
    ({"allow_ingress_from": "0.0.0.0/0"}, 403, "allow_ingress_from"),  # the admin's limit
    ({"connect_via": "vpn"}, 400, "connect_via"),
])
async def test_bad_reach_fields_are_refused_naming_the_field(service, api, fields, code, field):
    status, reply = await api("POST", "coiled-lab/api/clusters", body={"backend": "aws", "n_workers": 1, **fields})
    assert (status, reply["field"]) == (code, field), reply
    assert field in reply["error"]
    assert (await api("GET", "coiled-lab/api/clusters"))[1]["clusters"] == []  # nothing recorded
