"""An HTTP proxy in front of moto: the boundary where tests watch and inject AWS faults.

boto3 (through ``AWS_ENDPOINT_URL``) talks to this proxy, which forwards each request to
moto unchanged unless a *hook* answers it: throttling bursts, server errors, capacity
errors, requests that time out or whose connection is reset (before or after moto did
the work), a GPU image parameter moto does not have, console output from the EC2
emulator. Nothing of coiled-lab is patched: what it sees is what AWS could have answered.
Every request is recorded (service, action, parameters) for assertions.

Public SSM parameters AWS has and moto lacks (Debian's image parameters, the default
images of CPU machines) are answered on the way to moto, for every request and under
every hook (see :data:`STAND_INS`).
"""

from __future__ import annotations

import http.client
import json
import socket
import struct
import threading
import time
import urllib.parse
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Callable, Optional

HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "te", "trailer", "upgrade", "proxy-authorization"}


@dataclass
class Request:
    service: str  # "ec2", "ssm", "logs", ... (from the signature's credential scope)
    region: str
    action: str
    params: dict  # form fields (query protocol) or the JSON body
    json: bool  # the JSON protocol (SSM, CloudWatch Logs) rather than the query protocol (EC2, IAM)
    path: str
    headers: dict[str, str]
    body: bytes
    method: str = "POST"


@dataclass
class Response:
    status: int
    body: bytes
    headers: dict[str, str] = field(default_factory=dict)


# Public SSM parameters that moto lacks -> moto's parameter standing in for each: an image
# of the same architecture that moto has in every region (its Amazon Linux 2023 AMI), so
# that GetParameters / GetParameter answer a real moto AMI id of the request's region and
# DescribeImages of it works as on AWS. The image itself is moto's: it reports moto's
# 15 GiB "standard" (magnetic) root volume, not Debian's. The request sent to moto is
# re-encoded, so moto's IAM enforcement (/moto-api/reset-auth) would see a changed signature.
STAND_INS = {
    "/aws/service/debian/release/12/latest/amd64":
        "/aws/service/ami-amazon-linux-latest/al2023-ami-kernel-default-x86_64",
    "/aws/service/debian/release/12/latest/arm64":
        "/aws/service/ami-amazon-linux-latest/al2023-ami-kernel-default-arm64",
}

# A hook's answer that is no answer: the proxy resets the client's connection instead.
RESET = Response(0, b"")

# What :meth:`AWSProxy.fail` can do to a request, as AWS or the network could.
FAULT_KINDS = ("throttle", "server-error", "timeout", "reset", "reset-after")


# A hook gets the request and a function that forwards it (possibly changed) to moto.
Hook = Callable[[Request, Callable[[Optional[Request]], Response]], Optional[Response]]


def ec2_error(code: str, message: str, status: int = 400) -> Response:
    body = (f'<?xml version="1.0" encoding="UTF-8"?><Response><Errors><Error><Code>{code}</Code>'
            f"<Message>{message}</Message></Error></Errors><RequestID>proxy</RequestID></Response>")
    return Response(status, body.encode(), {"Content-Type": "text/xml"})


def json_error(kind: str, message: str, status: int = 400) -> Response:
    return Response(status, json.dumps({"__type": kind, "message": message}).encode(),
                    {"Content-Type": "application/x-amz-json-1.1"})


class AWSProxy:
    def __init__(self, upstream: str):
        url = urllib.parse.urlparse(upstream)
        self.upstream = (url.hostname, url.port)
        self.requests: list[Request] = []
        self.hooks: list[Hook] = []
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, name="aws-proxy", daemon=True)

    def start(self) -> "AWSProxy":
        self._thread.start()
        return self

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def add(self, hook: Hook) -> None:
        with self._lock:
            self.hooks.append(hook)

    def reset(self) -> None:
        """Forget hooks added by a test (the permanent ones are re-added by their owner)."""
        with self._lock:
            self.hooks = [h for h in self.hooks if getattr(h, "permanent", False)]

    def calls(self, action: Optional[str] = None, service: Optional[str] = None) -> list[Request]:
        with self._lock:
            return [r for r in self.requests
                    if (action is None or r.action == action) and (service is None or r.service == service)]

    # -- fault helpers -----------------------------------------------------------------------
    def throttle(self, action: str, times: int) -> list[int]:
        """Answer the next ``times`` requests of ``action`` with a throttling error."""
        return self.fail(action, "throttle", times)

    def fail(self, action: str, kind: str, times: int, skip: int = 0, hold: float = 0.0) -> list[int]:
        """Let ``skip`` requests of ``action`` through, then fail the next ``times`` ones:

        - ``throttle``: RequestLimitExceeded / ThrottlingException;
        - ``server-error``: a 500 InternalError / InternalFailure;
        - ``timeout``: no answer for ``hold`` seconds (longer than the client waits), then
          the connection is reset; moto never sees the request;
        - ``reset``: the connection is reset before moto sees the request;
        - ``reset-after``: moto does the work, then the connection is reset, so the
          client never learns that it succeeded (and its retry asks again).

        Returns a one-item list counting the failures given so far.
        """
        if kind not in FAULT_KINDS:
            raise ValueError(f"kind: {kind!r} is not allowed; allowed: {', '.join(FAULT_KINDS)}")
        seen, done = [0], [0]
        lock = threading.Lock()

        def hook(request: Request, forward) -> Optional[Response]:
            if request.action != action:
                return None
            with lock:
                seen[0] += 1
                if seen[0] <= skip or done[0] >= times:
                    return None
                done[0] += 1
            if kind == "throttle":
                if request.json:
                    return json_error("ThrottlingException", "Rate exceeded")
                return ec2_error("RequestLimitExceeded", "Request limit exceeded.", 503)
            if kind == "server-error":
                if request.json:
                    return json_error("InternalFailure", "The request processing has failed.", 500)
                return ec2_error("InternalError", "An internal error has occurred.", 500)
            if kind == "timeout":
                time.sleep(hold)
            elif kind == "reset-after":
                forward(None)
            return RESET

        self.add(hook)
        return done

    def insufficient_capacity(self, subnets: set[str], times: Optional[int] = None) -> list[int]:
        """EC2 has no capacity in these subnets (one zone's): a fleet request uses its
        other pools, as EC2 does, and fails with an error per pool when none is left.
        With ``times``, capacity comes back after that many fleet requests met the shortage."""
        done = [0]

        def hook(request: Request, forward) -> Optional[Response]:
            if request.action != "CreateFleet" or (times is not None and done[0] >= times):
                return None
            overrides = _overrides(request.params)
            keep = [o for o in overrides if o.get("SubnetId") not in subnets]
            if len(keep) == len(overrides):
                return None
            done[0] += 1
            if not keep:
                return _fleet_errors(request, overrides, "InsufficientInstanceCapacity",
                                     "We currently do not have sufficient capacity in the Availability Zone you requested.")
            params = {k: v for k, v in request.params.items() if ".Overrides." not in k}
            for n, override in enumerate(keep, 1):
                params.update({f"LaunchTemplateConfigs.1.Overrides.{n}.{k}": v for k, v in override.items()})
            return forward(Request(**{**request.__dict__, "params": params}))

        self.add(hook)
        return done

    def no_spot_capacity(self) -> list[int]:
        """Every spot request fails for lack of capacity; on-demand ones succeed."""
        done = [0]

        def hook(request: Request, forward) -> Optional[Response]:
            if request.action != "CreateFleet" or \
                    request.params.get("TargetCapacitySpecification.DefaultTargetCapacityType") != "spot":
                return None
            done[0] += 1
            return _fleet_errors(request, _overrides(request.params), "InsufficientInstanceCapacity",
                                 "There is no Spot capacity available that matches your request.")

        self.add(hook)
        return done

    def parameter(self, name: str, value: str) -> None:
        """SSM answers ``name`` with ``value``: a public parameter moto lacks (the GPU
        image's), or another image than moto's."""

        def hook(request: Request, forward) -> Optional[Response]:
            if request.action != "GetParameters" or name not in request.params.get("Names", []):
                return None
            answer = forward(None)
            body = json.loads(answer.body)
            body["Parameters"] = [p for p in body.get("Parameters", []) if p["Name"] != name]
            body["Parameters"].append({"Name": name, "Value": value, "Type": "String", "Version": 1})
            body["InvalidParameters"] = [n for n in body.get("InvalidParameters", []) if n != name]
            return Response(answer.status, json.dumps(body).encode(), answer.headers)

        self.add(hook)

    # -- plumbing --------------------------------------------------------------------------------
    def _forward(self, request: Request) -> Response:
        """moto's answer to ``request``, with the public parameters it lacks (:data:`STAND_INS`)."""
        if request.json and request.action in ("GetParameters", "GetParameter"):
            names = request.params.get("Names") if request.action == "GetParameters" else [request.params.get("Name")]
            if isinstance(names, list) and any(n in STAND_INS for n in names):
                return _stand_in_parameters(request, names, self._send)
        return self._send(request)

    def _send(self, request: Request) -> Response:
        body = request.body
        if not request.json and request.action:
            body = urllib.parse.urlencode(request.params).encode()
        conn = http.client.HTTPConnection(*self.upstream, timeout=120)
        try:
            headers = {k: v for k, v in request.headers.items() if k.lower() not in HOP_BY_HOP | {"content-length"}}
            headers["Content-Length"] = str(len(body))
            conn.request(request.method, request.path, body=body, headers=headers)
            answer = conn.getresponse()
            kept = HOP_BY_HOP | ({"content-length"} if request.method != "HEAD" else set())
            return Response(answer.status, answer.read(), {k: v for k, v in answer.getheaders() if k.lower() not in kept})
        finally:
            conn.close()

    def _handle(self, request: Request) -> Response:
        with self._lock:
            self.requests.append(request)
            hooks = list(self.hooks)

        def forward(changed: Optional[Request] = None) -> Response:
            return self._forward(changed or request)

        for hook in hooks:
            answer = hook(request, forward)
            if answer is not None:
                return answer
        return forward()

    def _handler(self):
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args) -> None:
                pass

            def _serve(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                response = proxy._handle(_parse(self.path, dict(self.headers.items()), body, self.command))
                if response is RESET:
                    # SO_LINGER 0: closing sends a TCP RST, as a dropped connection would.
                    self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                    self.close_connection = True
                    return
                self.send_response(response.status)
                for key, value in response.headers.items():
                    self.send_header(key, value)
                if self.command != "HEAD":  # (a HEAD's length is the object's, from upstream)
                    self.send_header("Content-Length", str(len(response.body)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(response.body)

            do_POST = do_GET = do_PUT = do_DELETE = do_HEAD = _serve

        return Handler


def _parse(path: str, headers: dict[str, str], body: bytes, method: str = "POST") -> Request:
    scope = headers.get("Authorization", "").split("Credential=", 1)[-1].split(",", 1)[0].split("/")
    region, service = (scope[2], scope[3]) if len(scope) >= 4 else ("", "")
    target = headers.get("X-Amz-Target")
    if target:
        params = json.loads(body or b"{}")
        return Request(service, region, target.rsplit(".", 1)[-1], params, True, path, headers, body, method)
    form = "x-www-form-urlencoded" in headers.get("Content-Type", "") or service not in ("s3", "")
    params = dict(urllib.parse.parse_qsl(body.decode(errors="replace"), keep_blank_values=True)) if body and form else {}
    return Request(service, region, params.get("Action", ""), params, False, path, headers, body, method)


def _stand_in_parameters(request: Request, names: list, send: Callable[[Request], Response]) -> Response:
    """Ask moto for each public parameter's stand-in; answer under the public names, as
    AWS would (the value, the type and the version are moto's)."""
    public: dict[str, list[str]] = {}  # name asked of moto -> the names the client asked for
    for name in names:
        public.setdefault(STAND_INS.get(name, name), []).append(name)
    if request.action == "GetParameters":
        params = {**request.params, "Names": list(public)}
    else:
        params = {**request.params, "Name": next(iter(public))}
    answer = send(Request(**{**request.__dict__, "params": params, "body": json.dumps(params).encode()}))
    if answer.status != 200:
        return answer
    body = json.loads(answer.body)

    def renamed(parameter: dict) -> list[dict]:
        name = parameter.get("Name")
        out = []
        for asked in public.get(name, [name]):
            copy = {**parameter, "Name": asked}
            if isinstance(copy.get("ARN"), str) and name:
                copy["ARN"] = copy["ARN"].replace(name, asked)
            out.append(copy)
        return out

    if request.action == "GetParameters":
        body["Parameters"] = [p for parameter in body.get("Parameters", []) for p in renamed(parameter)]
        body["InvalidParameters"] = [asked for n in body.get("InvalidParameters", []) for asked in public.get(n, [n])]
    elif "Parameter" in body:
        body["Parameter"] = renamed(body["Parameter"])[0]
    return Response(answer.status, json.dumps(body).encode(), answer.headers)


def _overrides(params: dict) -> list[dict[str, str]]:
    """The overrides of a CreateFleet request's first launch template config, in order."""
    found: dict[int, dict[str, str]] = {}
    prefix = "LaunchTemplateConfigs.1.Overrides."
    for key, value in params.items():
        if key.startswith(prefix):
            n, _, name = key[len(prefix):].partition(".")
            found.setdefault(int(n), {})[name] = value
    return [found[n] for n in sorted(found)]


def _fleet_errors(request: Request, overrides: list[dict[str, str]], code: str, message: str) -> Response:
    """An instant fleet's answer that launched nothing: one error per pool, as EC2 gives."""
    lifecycle = request.params.get("TargetCapacitySpecification.DefaultTargetCapacityType", "on-demand")
    items = "".join(
        f"<item><launchTemplateAndOverrides><overrides><instanceType>{o.get('InstanceType', '')}</instanceType>"
        f"<subnetId>{o.get('SubnetId', '')}</subnetId></overrides></launchTemplateAndOverrides>"
        f"<lifecycle>{lifecycle}</lifecycle><errorCode>{code}</errorCode><errorMessage>{message}</errorMessage></item>"
        for o in overrides
    )
    body = (f'<?xml version="1.0" encoding="UTF-8"?><CreateFleetResponse xmlns="http://ec2.amazonaws.com/doc/2016-11-15/">'
            f"<requestId>proxy</requestId><fleetId>fleet-proxy</fleetId><errorSet>{items}</errorSet>"
            f"<fleetInstanceSet/></CreateFleetResponse>")
    return Response(200, body.encode(), {"Content-Type": "text/xml"})
