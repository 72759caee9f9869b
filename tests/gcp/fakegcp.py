"""A fake of the Google Cloud REST APIs coiled-lab uses, on 127.0.0.1: no emulator speaks them.

It answers in the JSON shapes of the real services, so the real clients
(``google-cloud-compute`` with the REST transport, ``google-cloud-logging`` over HTTP,
google-auth's ``AuthorizedSession``) are pointed at :attr:`FakeGCP.url` and send real
requests:

- **Compute Engine** (``/compute/v1/...``): projects.get (the project's number), zones,
  machineTypes (per zone and aggregated), instances insert / get / list / aggregatedList
  (``labels.<k> = "<v>"`` filters) / delete / getSerialPortOutput / getIamPolicy /
  setIamPolicy, regionInstances.bulkInsert (count, name pattern,
  location policy), zone/region/global operations get and wait, networks, subnetworks,
  firewalls, images.getFromFamily, disks get / list / aggregatedList (each VM's boot disk,
  named after it, deleted with it when ``autoDelete``; a stopped VM keeps it), and the batch
  endpoint (``/batch/compute/v1``, ``multipart/mixed``, bodies too). Operations come back
  ``RUNNING`` and are ``DONE`` once waited for or read; a lack of capacity is an error *of
  the operation*, as GCE reports it. ``scheduling.maxRunDuration`` (at least 30 s, only with
  an ``instanceTerminationAction``) is kept on GCE's own clock: when it is over, the VM is
  deleted (``DELETE``) or stopped (``STOP``). A VM's token may call Compute only within its
  access scopes (``compute`` or ``cloud-platform``) and with a permission (the method id,
  ``compute.instances.delete``) granted to its service account by a custom role on the
  VM's own IAM policy or the project's: else 403, as GCE answers.
- **Cloud Logging** (``/v2/entries:write``, ``/v2/entries:list`` with ``logName``,
  ``labels."k"`` and ``timestamp`` filters, ``orderBy``, page tokens).
- **IAM** service accounts (``/v1/projects/<p>/serviceAccounts``), custom roles (create,
  get, patch of ``includedPermissions``, undelete) and **Resource Manager**
  ``getIamPolicy`` / ``setIamPolicy`` (etag checked).
- **Cloud Storage** (JSON API, ``/storage/v1/b...`` and ``/upload/storage/v1/b...``):
  buckets insert / get / patch, getIamPolicy / setIamPolicy (version 3, conditions),
  objects get (metadata, or the bytes with ``alt=media``) / list (``prefix``) / delete,
  media upload (``ifGenerationMatch``); the objects are kept in memory. Its callers are
  checked: the admin's tokens (from ``/token``) may do anything, as the project's owner; a
  VM's (:meth:`FakeGCP.accept_token`, which the GCE emulator calls for each token its
  metadata servers hand out) only what its access scopes and its service account's roles
  allow, on the bucket's IAM policy or the project's (``resource.name.startsWith(...)``
  conditions evaluated); any other token is refused (401).
- **OAuth** ``/token``: google-auth's service-account flow gets an access token here.
  Every other request must carry a bearer token (401 otherwise).

Faults: :meth:`FakeGCP.exhaust` (``ZONE_RESOURCE_POOL_EXHAUSTED`` in a zone, or for some
machine types in every zone: a stockout of the type, as GCE reports it
``ZONE_RESOURCE_POOL_EXHAUSTED_WITH_DETAILS``),
:attr:`FakeGCP.spot_stockout` (no Spot capacity anywhere), :meth:`FakeGCP.fail` (the next
``times`` requests of one method answer 429 or 5xx, before or after doing the work).
Inserts honour ``requestId`` as GCE does: a request repeated with the same id answers with
the first one's operation and makes nothing twice. Every request is logged with its
method id (``compute.regionInstances.bulkInsert``, ``logging.entries.list``...):
:meth:`FakeGCP.calls`, :meth:`FakeGCP.count`; :attr:`FakeGCP.http_requests` counts API requests
over HTTP (a batch is one, however many calls it carries), :attr:`FakeGCP.token_requests`
the token endpoint's.

Other fakes can be mounted on the same server: ``fake.route(method, path_regex, handler)``
registers a handler for requests whose path (without the query string) fully matches
``path_regex``; it is called with a :class:`Request` (method, path, query, JSON body,
headers, regex groups) and returns ``(status, json_body)``. Routes registered later are
tried first, so a test can also override a built-in route. Example, a Cloud Billing
Catalog answer::

    fake.route("GET", r"/v1/services/(?P<service>[^/]+)/skus", lambda r: (200, {"skus": []}))
"""

from __future__ import annotations

import datetime
import ipaddress
import itertools
import json
import re
import secrets
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler
from typing import Any, Callable, Optional
from urllib.parse import parse_qs, unquote, urlparse

from ..localhttp import LocalHTTP

PROJECT = "coiled-lab-test"
PROJECT_NUMBER = "123456789"  # what the GCE emulator's metadata servers say too
ZONES = {"us-central1": ["us-central1-a", "us-central1-b", "us-central1-c"], "europe-west1": ["europe-west1-b"]}
# name: (vCPUs, memory MiB, built-in accelerators (type, count), shared core)
MACHINE_TYPES: dict[str, tuple[int, int, Optional[tuple[str, int]], bool]] = {
    "e2-medium": (2, 4096, None, True),
    "e2-standard-2": (2, 8192, None, False),
    "e2-standard-4": (4, 16384, None, False),
    "e2-standard-8": (8, 32768, None, False),
    "n2-standard-2": (2, 8192, None, False),
    "n2-standard-4": (4, 16384, None, False),
    "n2-standard-8": (8, 32768, None, False),
    "n2d-standard-4": (4, 16384, None, False),
    "n1-standard-4": (4, 15360, None, False),
    "n1-standard-8": (8, 30720, None, False),
    "g2-standard-4": (4, 16384, ("nvidia-l4", 1), False),
}
IMAGES = {("debian-cloud", "debian-12"): "debian-12-bookworm-v20261110",
          ("deeplearning-platform-release", "common-cu123-debian-11-py310"): "common-cu123-v20261101-debian-11-py310"}
EXHAUSTED = "ZONE_RESOURCE_POOL_EXHAUSTED"
STOCKOUT = "ZONE_RESOURCE_POOL_EXHAUSTED_WITH_DETAILS"


@dataclass
class Request:
    method: str
    path: str
    query: dict[str, str]
    body: Any
    headers: dict[str, str]
    groups: dict[str, str] = field(default_factory=dict)
    raw: bytes = b""  # the body as sent (media uploads)

    @property
    def token(self) -> Optional[str]:
        auth = self.headers.get("authorization", "")
        return auth[len("Bearer "):] if auth.startswith("Bearer ") else None


@dataclass
class Media:
    """An answer that is bytes, not JSON (an object read with ``alt=media``)."""

    data: bytes
    content_type: str = "application/octet-stream"


@dataclass
class Call:
    """One API call as the fake saw it (a batch's calls each count here)."""

    id: str  # e.g. "compute.instances.insert"
    method: str
    path: str
    query: dict[str, str]
    body: Any
    token: Optional[str]


Handler = Callable[[Request], tuple[int, Any]]


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _time(text: str) -> datetime.datetime:
    return datetime.datetime.fromisoformat(text.replace("Z", "+00:00"))


def google_error(status: int, message: str, reason: str = "error") -> tuple[int, Any]:
    names = {400: "INVALID_ARGUMENT", 401: "UNAUTHENTICATED", 403: "PERMISSION_DENIED", 404: "NOT_FOUND",
             409: "ALREADY_EXISTS", 429: "RESOURCE_EXHAUSTED", 500: "INTERNAL", 503: "UNAVAILABLE"}
    return status, {"error": {"code": status, "message": message, "status": names.get(status, "UNKNOWN"),
                              "errors": [{"reason": reason, "message": message, "domain": "global"}]}}


class FakeGCP(LocalHTTP):
    def __init__(self, project: str = PROJECT) -> None:
        self.project = project
        self.lock = threading.RLock()
        self.calls_log: list[Call] = []
        self.http_requests = 0  # API requests received over HTTP (a batch is one)
        self.token_requests = 0  # access tokens asked for (google-auth: once an hour per credentials)
        self.tokens: set[str] = set()  # access tokens handed out by /token (the admin's)
        self.instances: dict[tuple[str, str], dict] = {}  # (zone, name) -> instance JSON
        self.instance_policies: dict[tuple[str, str], dict] = {}  # (zone, name) -> its IAM policy
        self.disks: dict[tuple[str, str], dict] = {}  # (zone, name) -> disk JSON
        self.roles: dict[str, dict] = {}  # "projects/<p>/roles/<id>" -> custom role JSON
        self._deadlines: dict[tuple[str, str], tuple[float, str]] = {}  # VM -> (end of its run, termination action)
        self.operations: dict[str, dict] = {}
        self.networks: dict[str, dict] = {}
        self.subnetworks: dict[tuple[str, str], dict] = {}
        self.firewalls: dict[str, dict] = {}
        self.service_accounts: dict[str, dict] = {}
        self.policy: dict[str, Any] = {"bindings": [], "etag": "BwAAAA==", "version": 1}
        self.project_number = PROJECT_NUMBER
        self.buckets: dict[str, dict] = {}  # name -> bucket JSON
        self.bucket_policies: dict[str, dict] = {}
        self.objects: dict[str, dict[str, tuple[dict, bytes]]] = {}  # bucket -> name -> (JSON, data)
        self.vm_tokens: dict[str, tuple[str, tuple[str, ...]]] = {}  # token -> (service account, scopes)
        self.storage_refused: list[tuple[str, str, str]] = []  # (principal, permission, resource) refused
        self.entries: list[dict] = []
        self.page_size = 1000  # entries.list pages at most this many entries
        self.exhausted: set[str] = set()  # zones, and machine types out of stock everywhere
        self.spot_stockout = False
        self.serial_output: Callable[[str, str], Optional[str]] = lambda zone, name: None
        # External addresses: the GCE emulator hands out its network's; TEST-NET-2 otherwise.
        self._external = itertools.count(1)
        self.public_address: Callable[[], str] = lambda: f"198.51.100.{next(self._external) % 250 + 1}"
        self._faults: dict[str, list[tuple[int, bool, list[int]]]] = {}
        self._by_request_id: dict[str, dict] = {}  # requestId -> the operation it started
        self._ids = itertools.count(4_000_000_000_000_000_000)
        self._addresses: dict[tuple[str, str], Any] = {}  # subnetwork -> address iterator
        self._routes: list[tuple[str, re.Pattern, str, Handler]] = []
        self._builtin_routes()
        super().__init__()
        self._closed = threading.Event()
        threading.Thread(target=self._keep_deadlines, name="fakegcp-deadlines", daemon=True).start()

    def close(self) -> None:
        self._closed.set()
        super().close()

    # -- the API tests use --------------------------------------------------------------------
    def route(self, method: str, path_regex: str, handler: Handler, method_id: Optional[str] = None) -> None:
        """Answer ``method`` requests whose path fully matches ``path_regex`` with ``handler``;
        they are logged as ``method_id`` (default: method and regex)."""
        self._routes.insert(0, (method.upper(), re.compile(path_regex), method_id or f"{method} {path_regex}",
                                handler))

    def calls(self, method_id: Optional[str] = None) -> list[Call]:
        with self.lock:
            return [c for c in self.calls_log if method_id is None or c.id == method_id]

    def count(self, method_id: Optional[str] = None) -> int:
        return len(self.calls(method_id))

    def counts(self) -> Counter:
        with self.lock:
            return Counter(c.id for c in self.calls_log)

    def fail(self, method_id: str, status: int = 429, times: int = 1, after: bool = False) -> list[int]:
        """The next ``times`` calls of ``method_id`` answer ``status`` — having done the
        work first when ``after`` (an answer lost on its way back); returns a one-item list
        counting those that did."""
        done = [0]
        with self.lock:
            self._faults.setdefault(method_id, []).extend([(status, after, done)] * times)
        return done

    def exhaust(self, *where: str) -> None:
        """No capacity from now on (until :meth:`reset`) in these zones, or for these
        machine types (names from :data:`MACHINE_TYPES`) in any zone."""
        self.exhausted.update(where)

    def reset(self) -> None:
        """Forget injected faults (state stays)."""
        with self.lock:
            self.exhausted.clear()
            self.spot_stockout = False
            self._faults.clear()

    def labelled(self, key: str, value: str) -> list[dict]:
        """Instances (any state) carrying this label."""
        with self.lock:
            return [dict(i) for i in self.instances.values() if i.get("labels", {}).get(key) == value]

    def set_status(self, zone: str, name: str, status: str) -> None:
        with self.lock:
            if (zone, name) in self.instances:
                self.instances[(zone, name)]["status"] = status

    # -- HTTP ----------------------------------------------------------------------------------
    def _handler(self) -> type[BaseHTTPRequestHandler]:
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                pass

            def _serve(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length) if length else b""
                url = urlparse(self.path)
                with fake.lock:
                    if url.path == "/token":
                        fake.token_requests += 1
                    else:
                        fake.http_requests += 1
                headers = {k.lower(): v for k, v in self.headers.items()}
                if url.path == "/batch/compute/v1" and self.command == "POST":
                    status, body, ctype = fake._batch(raw, headers)
                    return self._send(status, body.encode(), ctype)
                try:
                    parsed = json.loads(raw) if raw and "json" in headers.get("content-type", "json") else raw
                except ValueError:
                    parsed = raw
                query = {k: v[-1] for k, v in parse_qs(url.query).items()}
                if url.path == "/token" and self.command == "POST":
                    token = f"ya29.fake-{secrets.token_hex(8)}"
                    fake.tokens.add(token)
                    return self._json(200, {"access_token": token, "expires_in": 3600, "token_type": "Bearer"})
                status, answer = fake.dispatch(self.command, unquote(url.path), query, parsed, headers, raw)
                if isinstance(answer, Media):
                    return self._send(status, answer.data, answer.content_type)
                self._json(status, answer)

            def _json(self, status: int, body: Any) -> None:
                self._send(status, json.dumps(body).encode(), "application/json")

            def _send(self, status: int, data: bytes, ctype: str) -> None:
                if status == 204:  # no body, or it would be read as the next answer's start
                    data = b""
                self.send_response(status)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_POST = do_DELETE = do_PATCH = do_PUT = _serve

        return Handler

    def dispatch(self, method: str, path: str, query: dict[str, str], body: Any,
                 headers: dict[str, str], raw: bytes = b"") -> tuple[int, Any]:
        auth = headers.get("authorization", "")
        token = auth[len("Bearer "):] if auth.startswith("Bearer ") else None
        for route_method, pattern, method_id, handler in self._routes:
            match = pattern.fullmatch(path)
            if route_method != method or not match:
                continue
            with self.lock:
                self.calls_log.append(Call(method_id, method, path, query,
                                           f"<{len(body)} bytes>" if isinstance(body, bytes) else body, token))
                pending = self._faults.get(method_id)
                status, after, done = pending.pop(0) if pending else (None, False, [0])
                done[0] += 1
            if token is None:
                return google_error(401, "Request is missing required authentication credential.", "required")
            if status is not None and not after:
                return self._fault(method_id, status)
            if method_id.startswith("compute.") and token in self.vm_tokens:
                with self.lock:
                    denied = self._compute_caller(token, method_id, match.groupdict())
                if denied:
                    return denied
            try:
                with self.lock:
                    answer = handler(Request(method, path, query, body, headers, match.groupdict(), raw))
            except KeyError as exc:
                answer = google_error(404, f"The resource {exc} was not found", "notFound")
            return self._fault(method_id, status) if status is not None else answer
        return google_error(404, f"no such method: {method} {path}", "notFound")

    @staticmethod
    def _fault(method_id: str, status: int) -> tuple[int, Any]:
        return google_error(status, f"injected fault for {method_id}",
                            "rateLimitExceeded" if status == 429 else "backendError")

    def _batch(self, raw: bytes, headers: dict[str, str]) -> tuple[int, str, str]:
        """Compute's batch endpoint: each part an HTTP request, answered in order."""
        match = re.search(r"boundary=\"?([^\";]+)\"?", headers.get("content-type", ""))
        if not match:
            return 400, json.dumps(google_error(400, "batch: no boundary")[1]), "application/json"
        parts = [p for p in raw.decode().split(f"--{match.group(1)}") if p.strip() and p.strip() != "--"]
        out_boundary = f"batch_{secrets.token_hex(6)}"
        answers = []
        for i, part in enumerate(parts):
            request = re.search(r"^(GET|POST|DELETE|PATCH) (\S+) HTTP/1\.1", part, re.M)
            if not request:
                status, answer = google_error(400, "batch part without a request line")
            else:
                url = urlparse(request.group(2))
                # The inner request's body follows its headers and a blank line.
                inner = part[request.end():].replace("\r\n", "\n").split("\n\n", 1)
                text = inner[1].strip() if len(inner) == 2 else ""
                try:
                    body = json.loads(text) if text else None
                except ValueError:
                    body = None
                query = {k: v[-1] for k, v in parse_qs(url.query).items()}
                status, answer = self.dispatch(request.group(1), unquote(url.path), query, body, headers)
            answers.append(f"--{out_boundary}\r\nContent-Type: application/http\r\nContent-ID: <response-{i}>\r\n\r\n"
                           f"HTTP/1.1 {status} {'OK' if status < 400 else 'Error'}\r\n"
                           f"Content-Type: application/json; charset=UTF-8\r\n\r\n{json.dumps(answer)}\r\n")
        return 200, "".join(answers) + f"--{out_boundary}--\r\n", f"multipart/mixed; boundary={out_boundary}"

    # -- routes ----------------------------------------------------------------------------------
    def _add(self, method: str, method_id: str, regex: str, handler: Handler) -> None:
        self._routes.append((method, re.compile(regex), method_id, handler))

    def _builtin_routes(self) -> None:
        p = r"/compute/v1/projects/(?P<project>[^/]+)"
        z = p + r"/zones/(?P<zone>[^/]+)"
        r = p + r"/regions/(?P<region>[^/]+)"
        add = self._add
        add("GET", "compute.zones.list", p + "/zones", self._zones)
        add("GET", "compute.machineTypes.aggregatedList", p + "/aggregated/machineTypes", self._machine_types_agg)
        add("GET", "compute.machineTypes.list", z + "/machineTypes", self._machine_types)
        add("POST", "compute.instances.insert", z + "/instances", self._insert)
        add("GET", "compute.instances.list", z + "/instances", self._list)
        add("GET", "compute.instances.get", z + r"/instances/(?P<name>[^/]+)", self._get)
        add("DELETE", "compute.instances.delete", z + r"/instances/(?P<name>[^/]+)", self._delete)
        add("GET", "compute.instances.getSerialPortOutput", z + r"/instances/(?P<name>[^/]+)/serialPort",
            self._serial)
        add("GET", "compute.instances.aggregatedList", p + "/aggregated/instances", self._aggregated)
        add("POST", "compute.instances.setIamPolicy", z + r"/instances/(?P<name>[^/]+)/setIamPolicy",
            self._set_instance_policy)
        add("GET", "compute.instances.getIamPolicy", z + r"/instances/(?P<name>[^/]+)/getIamPolicy",
            self._get_instance_policy)
        add("GET", "compute.disks.get", z + r"/disks/(?P<name>[^/]+)",
            lambda q: (200, self.disks[(q.groups["zone"], q.groups["name"])]))
        add("GET", "compute.disks.list", z + "/disks",
            lambda q: (200, {"items": [d for (zone, _), d in self.disks.items() if zone == q.groups["zone"]]}))
        add("GET", "compute.disks.aggregatedList", p + "/aggregated/disks", self._disks_aggregated)
        add("POST", "compute.regionInstances.bulkInsert", r + "/instances/bulkInsert", self._bulk_insert)
        for scope, base in (("zone", z), ("region", r), ("global", p + "/global")):
            add("GET", f"compute.{scope}Operations.get", base + r"/operations/(?P<op>[^/]+)", self._operation)
            add("POST", f"compute.{scope}Operations.wait", base + r"/operations/(?P<op>[^/]+)/wait", self._operation)
        add("GET", "compute.networks.get", p + r"/global/networks/(?P<name>[^/]+)",
            lambda q: (200, self.networks[q.groups["name"]]))
        add("POST", "compute.networks.insert", p + "/global/networks", self._network_insert)
        add("GET", "compute.subnetworks.get", r + r"/subnetworks/(?P<name>[^/]+)",
            lambda q: (200, self.subnetworks[(q.groups["region"], q.groups["name"])]))
        add("POST", "compute.subnetworks.insert", r + "/subnetworks", self._subnetwork_insert)
        add("GET", "compute.firewalls.get", p + r"/global/firewalls/(?P<name>[^/]+)",
            lambda q: (200, self.firewalls[q.groups["name"]]))
        add("GET", "compute.firewalls.list", p + "/global/firewalls",
            lambda q: (200, {"items": list(self.firewalls.values())}))
        add("POST", "compute.firewalls.insert", p + "/global/firewalls", self._firewall_insert)
        add("GET", "compute.images.getFromFamily", p + r"/global/images/family/(?P<family>[^/]+)", self._image)
        add("POST", "logging.entries.write", "/v2/entries:write", self._write_entries)
        add("POST", "logging.entries.list", "/v2/entries:list", self._list_entries)
        add("GET", "iam.serviceAccounts.get", r"/v1/projects/(?P<project>[^/]+)/serviceAccounts/(?P<email>[^/]+)",
            lambda q: (200, self.service_accounts[q.groups["email"]]))
        add("POST", "iam.serviceAccounts.create", r"/v1/projects/(?P<project>[^/]+)/serviceAccounts",
            self._create_account)
        role = r"/v1/projects/(?P<project>[^/]+)/roles/(?P<role>[^/:]+)"
        add("POST", "iam.roles.create", r"/v1/projects/(?P<project>[^/]+)/roles", self._create_role)
        add("GET", "iam.roles.get", role, lambda q: (200, self.roles[f"projects/{q.groups['project']}/roles/"
                                                                    f"{q.groups['role']}"]))
        add("PATCH", "iam.roles.patch", role, self._patch_role)
        add("POST", "iam.roles.undelete", role + ":undelete", self._undelete_role)
        add("POST", "cloudresourcemanager.projects.getIamPolicy", r"/v1/projects/(?P<project>[^/:]+):getIamPolicy",
            lambda q: (200, json.loads(json.dumps(self.policy))))
        add("POST", "cloudresourcemanager.projects.setIamPolicy", r"/v1/projects/(?P<project>[^/:]+):setIamPolicy",
            self._set_policy)
        add("GET", "compute.projects.get", p, self._project)
        b = r"/storage/v1/b/(?P<bucket>[^/]+)"
        add("POST", "storage.buckets.insert", "/storage/v1/b", self._bucket_insert)
        add("GET", "storage.buckets.get", b, self._bucket_get)
        add("PATCH", "storage.buckets.patch", b, self._bucket_patch)
        add("GET", "storage.buckets.getIamPolicy", b + "/iam", self._bucket_get_policy)
        add("PUT", "storage.buckets.setIamPolicy", b + "/iam", self._bucket_set_policy)
        add("GET", "storage.objects.list", b + "/o", self._objects_list)
        add("GET", "storage.objects.get", b + "/o/(?P<object>.+)", self._object_get)
        add("DELETE", "storage.objects.delete", b + "/o/(?P<object>.+)", self._object_delete)
        add("POST", "storage.objects.insert", "/upload" + b + "/o", self._object_upload)

    # -- compute ---------------------------------------------------------------------------------
    def _link(self, path: str) -> str:
        return f"{self.url}/compute/v1/projects/{self.project}/{path}"

    def _zones(self, q: Request) -> tuple[int, Any]:
        return 200, {"items": [{"name": zone, "region": self._link(f"regions/{region}"), "status": "UP"}
                               for region, zones in ZONES.items() for zone in zones]}

    def _machine_type(self, zone: str, name: str) -> dict:
        vcpus, memory, accelerators, shared = MACHINE_TYPES[name]
        out = {"name": name, "guestCpus": vcpus, "memoryMb": memory, "zone": zone, "isSharedCpu": shared,
               "selfLink": self._link(f"zones/{zone}/machineTypes/{name}")}
        if accelerators:
            out["accelerators"] = [{"guestAcceleratorType": accelerators[0], "guestAcceleratorCount": accelerators[1]}]
        return out

    def _machine_types_agg(self, q: Request) -> tuple[int, Any]:
        return 200, {"items": {f"zones/{zone}": {"machineTypes": [self._machine_type(zone, n) for n in MACHINE_TYPES]}
                               for zones in ZONES.values() for zone in zones}}

    def _machine_types(self, q: Request) -> tuple[int, Any]:
        return 200, {"items": [self._machine_type(q.groups["zone"], n) for n in MACHINE_TYPES]}

    def _operation_of(self, kind: str, scope: str, target: str, error: Optional[tuple[str, str]] = None,
                      **extra: Any) -> dict:
        name = f"operation-{secrets.token_hex(8)}"
        op = {"kind": "compute#operation", "id": str(next(self._ids)), "name": name, "operationType": kind,
              "status": "RUNNING", "targetLink": target, "insertTime": _now(),
              "selfLink": self._link(f"{scope}/operations/{name}"), **extra}
        if scope.startswith("zones/"):
            op["zone"] = self._link(scope)
        elif scope.startswith("regions/"):
            op["region"] = self._link(scope)
        if error:
            op["error"] = {"errors": [{"code": error[0], "message": error[1]}]}
            op["httpErrorStatusCode"] = 503
        self.operations[name] = op
        return op

    def _operation(self, q: Request) -> tuple[int, Any]:
        op = self.operations[q.groups["op"]]
        op["status"] = "DONE"  # nothing here takes time: done once anyone looks
        op.setdefault("endTime", _now())
        return 200, op

    def _refused(self, zone: str, spot: bool, machine: str) -> Optional[tuple[str, str]]:
        if machine in self.exhausted:
            return STOCKOUT, f"The zone 'projects/{self.project}/zones/{zone}' does not have enough resources " \
                             f"available to fulfill the request. '(resource type:compute)' ({machine})."
        if zone in self.exhausted:
            return EXHAUSTED, f"The zone 'projects/{self.project}/zones/{zone}' does not have enough resources " \
                              "available to fulfill the request. Try a different zone, or try again later."
        if spot and self.spot_stockout:
            return EXHAUSTED, f"The zone 'projects/{self.project}/zones/{zone}' does not have enough resources " \
                              "available to fulfill the request (Spot VMs)."
        return None

    def _address(self, subnetwork: str) -> str:
        key = subnetwork.split("/regions/", 1)[-1].split("/subnetworks/")
        subnet = self.subnetworks.get((key[0], key[1])) if len(key) == 2 else None
        if subnet is None:
            raise KeyError(subnetwork)
        if (key[0], key[1]) not in self._addresses:
            self._addresses[(key[0], key[1])] = ipaddress.ip_network(subnet["ipCidrRange"]).hosts()
            next(self._addresses[(key[0], key[1])])  # .1 is the gateway
        return str(next(self._addresses[(key[0], key[1])]))

    def _create(self, zone: str, name: str, props: dict) -> dict:
        if (zone, name) in self.instances:
            raise ValueError(f"The resource '{name}' already exists")
        machine = props["machineType"].rsplit("/", 1)[-1]
        if machine not in MACHINE_TYPES:
            raise ValueError(f"Invalid value for field 'machineType': '{props['machineType']}'")
        interfaces = []
        for interface in props.get("networkInterfaces", []):
            key = interface["subnetwork"].split("/regions/", 1)[-1].split("/subnetworks/")
            interfaces.append({**interface, "networkIP": self._address(interface["subnetwork"]),
                               # GCE fills in the subnetwork's network
                               "network": self.subnetworks[(key[0], key[1])]["network"],
                               "accessConfigs": [{**a, "natIP": self.public_address()}
                                                 for a in interface.get("accessConfigs", [])]})
        scheduling = props.get("scheduling", {})
        action, duration = scheduling.get("instanceTerminationAction"), scheduling.get("maxRunDuration")
        if duration is not None:
            if action not in ("DELETE", "STOP"):
                raise ValueError("Invalid value for field 'resource.scheduling.instanceTerminationAction': "
                                 f"'{action or ''}'. An instance termination action is required with maxRunDuration.")
            if int(duration.get("seconds", 0)) < 30:
                raise ValueError("Invalid value for field 'resource.scheduling.maxRunDuration.seconds': "
                                 f"'{duration.get('seconds')}'. Must be at least 30 seconds.")
        link = self._link(f"zones/{zone}/instances/{name}")
        disks = [self._boot_disk(zone, name if not i else f"{name}-{i}", disk, link, props.get("labels", {}))
                 for i, disk in enumerate(props.get("disks", []))]
        instance = {
            **props, "kind": "compute#instance", "id": str(next(self._ids)), "name": name,
            "zone": self._link(f"zones/{zone}"), "machineType": self._link(f"zones/{zone}/machineTypes/{machine}"),
            "status": "RUNNING", "creationTimestamp": _now(), "networkInterfaces": interfaces, "disks": disks,
            "selfLink": link,
        }
        self.instances[(zone, name)] = instance
        if duration is not None:
            self._deadlines[(zone, name)] = (time.time() + int(duration["seconds"]), action)
        return instance

    def _boot_disk(self, zone: str, name: str, attached: dict, user: str, labels: dict) -> dict:
        """The persistent disk made from ``initializeParams`` (named after the VM, as GCE
        names it); the VM lists it attached, with its ``source``."""
        params = attached.get("initializeParams", {})
        link = self._link(f"zones/{zone}/disks/{name}")
        self.disks[(zone, name)] = {
            "kind": "compute#disk", "id": str(next(self._ids)), "name": name, "zone": self._link(f"zones/{zone}"),
            "sizeGb": str(params.get("diskSizeGb", 10)), "type": params.get("diskType", "pd-standard"),
            "sourceImage": params.get("sourceImage"), "status": "READY", "users": [user],
            "labels": params.get("labels", labels), "creationTimestamp": _now(), "selfLink": link}
        return {**attached, "source": link, "autoDelete": bool(attached.get("autoDelete")),
                "type": "PERSISTENT", "mode": "READ_WRITE"}

    def _remove(self, zone: str, name: str) -> None:
        """A VM goes, and with it its disks marked ``autoDelete`` and its IAM policy."""
        instance = self.instances.pop((zone, name))
        for disk in instance.get("disks", []):
            if disk.get("autoDelete"):
                self.disks.pop((zone, disk["source"].rsplit("/", 1)[-1]), None)
        self.instance_policies.pop((zone, name), None)
        self._deadlines.pop((zone, name), None)

    def _keep_deadlines(self) -> None:
        """GCE's clock: a VM whose maxRunDuration is over is deleted or stopped."""
        while not self._closed.wait(0.2):
            with self.lock:
                now = time.time()
                for (zone, name), (when, action) in list(self._deadlines.items()):
                    if now < when or (zone, name) not in self.instances:
                        continue
                    if action == "DELETE":
                        self._remove(zone, name)
                    else:
                        self.instances[(zone, name)]["status"] = "TERMINATED"
                        del self._deadlines[(zone, name)]

    def _repeated(self, q: Request) -> Optional[dict]:
        """The operation an earlier request with this ``requestId`` started (GCE keeps them
        for an hour), so a retried insert makes nothing twice."""
        return self._by_request_id.get(q.query.get("requestId", ""))

    def _started(self, q: Request, op: dict) -> tuple[int, Any]:
        if q.query.get("requestId"):
            self._by_request_id[q.query["requestId"]] = op
        return 200, op

    def _insert(self, q: Request) -> tuple[int, Any]:
        if self._repeated(q):
            return 200, self._repeated(q)
        zone, props = q.groups["zone"], q.body
        spot = props.get("scheduling", {}).get("provisioningModel") == "SPOT"
        error = self._refused(zone, spot, props.get("machineType", "").rsplit("/", 1)[-1])
        try:
            if error is None:
                self._create(zone, props["name"], props)
        except ValueError as exc:
            return google_error(409 if "exists" in str(exc) else 400, str(exc), "invalid")
        return self._started(q, self._operation_of(
            "insert", f"zones/{zone}", self._link(f"zones/{zone}/instances/{props['name']}"), error))

    def _bulk_insert(self, q: Request) -> tuple[int, Any]:
        if self._repeated(q):
            return 200, self._repeated(q)
        region, body = q.groups["region"], q.body
        count, pattern, props = int(body["count"]), body["namePattern"], body["instanceProperties"]
        spot = props.get("scheduling", {}).get("provisioningModel") == "SPOT"
        locations = body.get("locationPolicy", {}).get("locations", {})
        allowed = [z for z in ZONES[region] if locations.get(f"zones/{z}", {}).get("preference", "ALLOW") == "ALLOW"]
        errors = [self._refused(z, spot, props.get("machineType", "").rsplit("/", 1)[-1]) for z in allowed]
        zone = next((z for z, e in zip(allowed, errors) if e is None), None)
        target = self._link(f"regions/{region}/instances")
        if zone is None:
            return self._started(q, self._operation_of("bulkInsert", f"regions/{region}", target,
                                                       next((e for e in errors if e), (EXHAUSTED, "no zone allowed"))))
        if "#" not in pattern:
            return google_error(400, "Invalid value for field 'namePattern'", "invalid")
        digits = pattern.count("#")
        taken = {name for _, name in self.instances}
        # GCE skips the numbers the pattern already has.
        free = (n for n in itertools.count(1) if pattern.replace("#" * digits, f"{n:0{digits}d}") not in taken)
        try:
            for i in itertools.islice(free, count):
                self._create(zone, pattern.replace("#" * digits, f"{i:0{digits}d}"), props)
        except ValueError as exc:
            return google_error(400, str(exc), "invalid")
        return self._started(q, self._operation_of(
            "bulkInsert", f"regions/{region}", target, None, instancesBulkInsertOperationMetadata={
                "perLocationStatus": {f"zones/{zone}": {"status": "FULFILLED", "createdVmCount": count}}}))

    def _get(self, q: Request) -> tuple[int, Any]:
        return 200, self.instances[(q.groups["zone"], q.groups["name"])]

    def _list(self, q: Request) -> tuple[int, Any]:
        return 200, {"items": [i for (zone, _), i in self.instances.items() if zone == q.groups["zone"]
                               and _matches(i, q.query.get("filter"))]}

    def _aggregated(self, q: Request) -> tuple[int, Any]:
        items: dict[str, dict] = {}
        for (zone, _), instance in sorted(self.instances.items()):
            if _matches(instance, q.query.get("filter")):
                items.setdefault(f"zones/{zone}", {"instances": []})["instances"].append(instance)
        return 200, {"items": items}

    def _delete(self, q: Request) -> tuple[int, Any]:
        zone, name = q.groups["zone"], q.groups["name"]
        self._remove(zone, name)
        return 200, self._operation_of("delete", f"zones/{zone}", self._link(f"zones/{zone}/instances/{name}"))

    def _disks_aggregated(self, q: Request) -> tuple[int, Any]:
        items: dict[str, dict] = {}
        for (zone, _), disk in sorted(self.disks.items()):
            items.setdefault(f"zones/{zone}", {"disks": []})["disks"].append(disk)
        return 200, {"items": items}

    def _get_instance_policy(self, q: Request) -> tuple[int, Any]:
        key = (q.groups["zone"], q.groups["name"])
        self.instances[key]
        return 200, json.loads(json.dumps(self.instance_policies.get(key, {"version": 1, "etag": "ACAB"})))

    def _set_instance_policy(self, q: Request) -> tuple[int, Any]:
        """``instances.setIamPolicy`` (a ZoneSetPolicyRequest): the policy replaces the VM's own."""
        key = (q.groups["zone"], q.groups["name"])
        self.instances[key]
        policy, current = (q.body or {}).get("policy", {}), self.instance_policies.get(key, {"etag": "ACAB"})
        if policy.get("etag") and policy["etag"] != current["etag"]:
            return google_error(412, "Precondition Failed", "conditionNotMet")
        for binding in policy.get("bindings", []):
            role = binding.get("role", "")
            if role.startswith("projects/") and (role not in self.roles or self.roles[role].get("deleted")):
                return google_error(400, f"Role ({role}) does not exist in the resource's hierarchy.", "badRequest")
        self.instance_policies[key] = {"version": 1, "bindings": policy.get("bindings", []),
                                       "etag": f"B{secrets.token_hex(3)}="}
        return 200, json.loads(json.dumps(self.instance_policies[key]))

    def _compute_caller(self, token: str, method_id: str, groups: dict[str, str]) -> Optional[tuple[int, Any]]:
        """None if this VM's token may call ``method_id`` on the resource ``groups`` name;
        else GCE's 403 (the scope first, then IAM: the VM's own policy and the project's)."""
        account, scopes = self.vm_tokens[token]
        if not {f"https://www.googleapis.com/auth/{s}" for s in ("compute", "cloud-platform")} & set(scopes):
            return google_error(403, "Request had insufficient authentication scopes.", "insufficientPermissions")
        key = (groups.get("zone"), groups.get("name"))
        resource = f"projects/{self.project}" + (f"/zones/{key[0]}/instances/{key[1]}"
                                                  if key[0] and key[1] and method_id.startswith("compute.instances.")
                                                  else "")
        bindings = list(self.policy.get("bindings", []))
        if resource != f"projects/{self.project}":
            bindings += self.instance_policies.get(key, {}).get("bindings", [])
        for binding in bindings:
            if f"serviceAccount:{account}" in binding.get("members", []) and \
                    method_id in self._permissions(binding.get("role", "")):
                return None
        return google_error(403, f"Required '{method_id}' permission for '{resource}'", "forbidden")

    def _permissions(self, role: str) -> tuple[str, ...]:
        """What a custom role allows; Compute's predefined roles are not modelled (no VM's
        service account holds one), so they allow a VM's token nothing here."""
        custom = self.roles.get(role)
        return () if custom is None or custom.get("deleted") else tuple(custom.get("includedPermissions", []))

    def _serial(self, q: Request) -> tuple[int, Any]:
        zone, name = q.groups["zone"], q.groups["name"]
        self.instances[(zone, name)]
        text = self.serial_output(zone, name) or ""
        return 200, {"kind": "compute#serialPortOutput", "contents": text, "start": "0", "next": str(len(text))}

    def _network_insert(self, q: Request) -> tuple[int, Any]:
        name = q.body["name"]
        if name in self.networks:
            return google_error(409, f"The resource '{name}' already exists", "alreadyExists")
        self.networks[name] = {**q.body, "selfLink": self._link(f"global/networks/{name}")}
        return 200, self._operation_of("insert", "global", self.networks[name]["selfLink"])

    def _subnetwork_insert(self, q: Request) -> tuple[int, Any]:
        region, name = q.groups["region"], q.body["name"]
        network = q.body["network"].rsplit("/", 1)[-1]
        if network not in self.networks:
            return google_error(400, f"The resource network '{network}' was not found", "invalid")
        if (region, name) in self.subnetworks:
            return google_error(409, f"The resource '{name}' already exists", "alreadyExists")
        self.subnetworks[(region, name)] = {**q.body, "network": self.networks[network]["selfLink"],
                                            "region": self._link(f"regions/{region}"),
                                            "selfLink": self._link(f"regions/{region}/subnetworks/{name}")}
        return 200, self._operation_of("insert", f"regions/{region}", self.subnetworks[(region, name)]["selfLink"])

    def _firewall_insert(self, q: Request) -> tuple[int, Any]:
        name = q.body["name"]
        if name in self.firewalls:
            return google_error(409, f"The resource '{name}' already exists", "alreadyExists")
        self.firewalls[name] = {**q.body, "selfLink": self._link(f"global/firewalls/{name}")}
        return 200, self._operation_of("insert", "global", self.firewalls[name]["selfLink"])

    def _image(self, q: Request) -> tuple[int, Any]:
        name = IMAGES[(q.groups["project"], q.groups["family"])]
        return 200, {"name": name, "family": q.groups["family"], "status": "READY",
                     "selfLink": f"{self.url}/compute/v1/projects/{q.groups['project']}/global/images/{name}"}

    # -- logging -----------------------------------------------------------------------------------
    def _write_entries(self, q: Request) -> tuple[int, Any]:
        body = q.body
        for entry in body.get("entries", []):
            self.entries.append({
                "logName": entry.get("logName") or body["logName"],
                "resource": entry.get("resource") or body.get("resource") or {"type": "global"},
                "labels": {**body.get("labels", {}), **entry.get("labels", {})},
                "timestamp": entry.get("timestamp") or _now(), "receiveTimestamp": _now(),
                "insertId": secrets.token_hex(8), "textPayload": entry.get("textPayload", ""),
                "_token": q.headers.get("authorization", "")[len("Bearer "):],
            })
        return 200, {}

    def _list_entries(self, q: Request) -> tuple[int, Any]:
        body = q.body or {}
        entries = [e for e in self.entries if _log_match(e, body.get("filter", ""))]
        entries.sort(key=lambda e: _time(e["timestamp"]), reverse="desc" in body.get("orderBy", ""))
        start = int(body.get("pageToken") or 0)
        size = min(int(body.get("pageSize") or self.page_size), self.page_size)
        page = [{k: v for k, v in e.items() if not k.startswith("_")} for e in entries[start:start + size]]
        answer: dict[str, Any] = {"entries": page}
        if start + size < len(entries):
            answer["nextPageToken"] = str(start + size)
        return 200, answer

    # -- IAM ---------------------------------------------------------------------------------------
    def _create_account(self, q: Request) -> tuple[int, Any]:
        account_id = q.body["accountId"]
        email = f"{account_id}@{q.groups['project']}.iam.gserviceaccount.com"
        if email in self.service_accounts:
            return google_error(409, f"Service account {account_id} already exists", "alreadyExists")
        self.service_accounts[email] = {"name": f"projects/{q.groups['project']}/serviceAccounts/{email}",
                                        "email": email, "projectId": q.groups["project"],
                                        **q.body.get("serviceAccount", {})}
        return 200, self.service_accounts[email]

    def _create_role(self, q: Request) -> tuple[int, Any]:
        role_id, role = q.body.get("roleId", ""), q.body.get("role", {})
        name = f"projects/{q.groups['project']}/roles/{role_id}"
        if not re.fullmatch(r"[a-zA-Z0-9_.]{3,64}", role_id):
            return google_error(400, f"The role_id ({role_id}) is invalid.", "badRequest")
        if name in self.roles:
            return google_error(409, f"A role named {role_id} in projects/{q.groups['project']} already exists.",
                                "alreadyExists")
        self.roles[name] = {"name": name, "title": role.get("title", ""), "description": role.get("description", ""),
                            "includedPermissions": list(role.get("includedPermissions", [])),
                            "stage": role.get("stage", "ALPHA"), "etag": f"B{secrets.token_hex(3)}="}
        return 200, self.roles[name]

    def _patch_role(self, q: Request) -> tuple[int, Any]:
        role = self.roles[f"projects/{q.groups['project']}/roles/{q.groups['role']}"]
        for field_name in (q.query.get("updateMask") or "title,description,includedPermissions,stage").split(","):
            if field_name in (q.body or {}):
                role[field_name] = q.body[field_name]
        role["etag"] = f"B{secrets.token_hex(3)}="
        return 200, role

    def _undelete_role(self, q: Request) -> tuple[int, Any]:
        role = self.roles[f"projects/{q.groups['project']}/roles/{q.groups['role']}"]
        role.pop("deleted", None)
        return 200, role

    def _set_policy(self, q: Request) -> tuple[int, Any]:
        policy = q.body["policy"]
        if policy.get("etag") != self.policy["etag"]:
            return 409, {"error": {"code": 409, "message": "etag mismatch", "status": "ABORTED"}}
        self.policy = {**policy, "etag": f"Bw{secrets.token_hex(4)}=="}
        return 200, self.policy

    def _project(self, q: Request) -> tuple[int, Any]:
        if q.groups["project"] != self.project:
            return google_error(404, f"The resource 'projects/{q.groups['project']}' was not found", "notFound")
        return 200, {"kind": "compute#project", "name": self.project, "id": self.project_number,
                     "selfLink": self._link("")[:-1]}

    # -- Cloud Storage -------------------------------------------------------------------------------
    def accept_token(self, token: str, service_account: str, scopes: Any) -> None:
        """A VM's access token (its metadata server handed it out): storage requests with it
        act as ``service_account``, within ``scopes``."""
        with self.lock:
            self.vm_tokens[token] = (service_account, tuple(scopes))

    def add_bucket(self, name: str, project_number: Optional[str] = None, readable: bool = True, **fields: Any) -> dict:
        """A bucket made outside coiled-lab: another project's (``project_number``), which
        only answers 403 unless ``readable`` (its owner let everyone read it)."""
        with self.lock:
            self.buckets[name] = self._bucket(name, {**fields, "location": fields.get("location", "US")},
                                              project_number or self.project_number)
            self.buckets[name]["_readable"] = readable
            self.bucket_policies[name] = {"version": 1, "etag": "CAE=", "bindings": []}
            self.objects[name] = {}
            return self.buckets[name]

    def _bucket(self, name: str, body: dict, number: str) -> dict:
        iam = body.get("iamConfiguration", {})
        now = _now()
        return {"kind": "storage#bucket", "id": name, "name": name, "projectNumber": number,
                "location": body.get("location", "US").upper(), "storageClass": body.get("storageClass", "STANDARD"),
                "timeCreated": now, "updated": now, "metageneration": "1", "etag": "CAE=",
                "iamConfiguration": {
                    "uniformBucketLevelAccess": {"enabled": bool(iam.get("uniformBucketLevelAccess", {}).get(
                        "enabled"))},
                    "publicAccessPrevention": iam.get("publicAccessPrevention", "inherited")},
                **({"labels": body["labels"]} if body.get("labels") else {}),
                **({"lifecycle": body["lifecycle"]} if body.get("lifecycle") else {})}

    def _storage_caller(self, q: Request, permission: str, bucket: str,
                        obj: Optional[str] = None) -> Optional[tuple[int, Any]]:
        """None if the caller may; else the error GCS answers."""
        token = q.token
        resource = f"projects/_/buckets/{bucket}" + (f"/objects/{obj}" if obj is not None else "")
        if token in self.tokens:
            found = self.buckets.get(bucket)
            if found is not None and found["projectNumber"] != self.project_number and not (
                    found.get("_readable") and permission in ("storage.buckets.get", "storage.objects.get")):
                self.storage_refused.append(("admin", permission, resource))
                return google_error(403, f"admin@{self.project}.iam.gserviceaccount.com does not have {permission} "
                                         f"access to the Google Cloud Storage bucket.", "forbidden")
            return None  # the project's owner
        if token not in self.vm_tokens:
            return google_error(401, "Invalid Credentials", "authError")
        account, scopes = self.vm_tokens[token]
        writes = permission not in ("storage.objects.get", "storage.objects.list", "storage.buckets.get")
        scoped = {f"https://www.googleapis.com/auth/{s}" for s in (
            "cloud-platform", "devstorage.full_control", "devstorage.read_write",
            *([] if writes else ["devstorage.read_only"]))}
        if not scoped & set(scopes):
            self.storage_refused.append((account, permission, resource))
            return google_error(403, "Provided scope(s) are not authorized", "insufficientPermissions")
        found = self.buckets.get(bucket)
        member = f"serviceAccount:{account}"
        bindings = list(self.policy.get("bindings", [])) + (
            list(self.bucket_policies.get(bucket, {}).get("bindings", [])) if found is not None else [])
        for binding in bindings:
            if permission in STORAGE_ROLES.get(binding.get("role"), ()) and (
                    member in binding.get("members", []) or "allUsers" in binding.get("members", [])
                    or "allAuthenticatedUsers" in binding.get("members", [])) and _condition_holds(
                    binding.get("condition"), resource):
                return None
        if found is not None and found.get("_readable") and permission in ("storage.buckets.get",
                                                                           "storage.objects.get"):
            return None
        self.storage_refused.append((account, permission, resource))
        return google_error(403, f"{account} does not have {permission} access to the Google Cloud Storage "
                                 f"{'object' if obj is not None else 'bucket'}. Permission '{permission}' denied on "
                                 f"resource (or it may not exist).", "forbidden")

    def _bucket_insert(self, q: Request) -> tuple[int, Any]:
        body, name = q.body or {}, (q.body or {}).get("name", "")
        if q.query.get("project") not in (self.project, self.project_number):
            return google_error(400, "Invalid project", "invalid")
        if (not re.fullmatch(r"[a-z0-9][a-z0-9._-]{1,61}[a-z0-9]", name) or name.startswith("goog")
                or "google" in name):
            return google_error(400, f"Invalid bucket name: '{name}'", "invalid")
        if name in self.buckets:
            return google_error(409, "Your previous request to create the named bucket succeeded and you already "
                                     "own it." if self.buckets[name]["projectNumber"] == self.project_number else
                                "The requested bucket name is not available. The bucket namespace is shared by all "
                                "users of the system. Please select a different name and try again.", "conflict")
        denied = self._storage_caller(q, "storage.buckets.create", name)
        if denied:
            return denied
        self.buckets[name] = self._bucket(name, body, self.project_number)
        self.bucket_policies[name] = {"version": 1, "etag": "CAE=", "bindings": [
            {"role": "roles/storage.legacyBucketOwner", "members": [f"projectEditor:{self.project}",
                                                                    f"projectOwner:{self.project}"]},
            {"role": "roles/storage.legacyBucketReader", "members": [f"projectViewer:{self.project}"]}]}
        self.objects[name] = {}
        return 200, self._public(self.buckets[name])

    @staticmethod
    def _public(item: dict) -> dict:
        return {k: v for k, v in item.items() if not k.startswith("_")}

    def _found_bucket(self, q: Request, permission: str, obj: Optional[str] = None) -> tuple[Optional[dict], Any]:
        """(the bucket, None) or (None, the error to answer)."""
        name = q.groups["bucket"]
        if name not in self.buckets:
            return None, google_error(404, "The specified bucket does not exist.", "notFound")
        denied = self._storage_caller(q, permission, name, obj)
        return (None, denied) if denied else (self.buckets[name], None)

    def _bucket_get(self, q: Request) -> tuple[int, Any]:
        found, error = self._found_bucket(q, "storage.buckets.get")
        return error if error else (200, self._public(found))

    def _bucket_patch(self, q: Request) -> tuple[int, Any]:
        found, error = self._found_bucket(q, "storage.buckets.update")
        if error:
            return error
        body = q.body or {}
        if "iamConfiguration" in body:
            iam = body["iamConfiguration"]
            if "uniformBucketLevelAccess" in iam:
                found["iamConfiguration"]["uniformBucketLevelAccess"] = {
                    "enabled": bool(iam["uniformBucketLevelAccess"].get("enabled"))}
            if "publicAccessPrevention" in iam:
                found["iamConfiguration"]["publicAccessPrevention"] = iam["publicAccessPrevention"]
        if "labels" in body:
            labels = {**found.get("labels", {}), **body["labels"]}
            found["labels"] = {k: v for k, v in labels.items() if v is not None}
        if "lifecycle" in body:
            found["lifecycle"] = body["lifecycle"]
        found["metageneration"] = str(int(found["metageneration"]) + 1)
        found["updated"] = _now()
        return 200, self._public(found)

    def _bucket_get_policy(self, q: Request) -> tuple[int, Any]:
        found, error = self._found_bucket(q, "storage.buckets.getIamPolicy")
        if error:
            return error
        policy = self.bucket_policies[found["name"]]
        if any(b.get("condition") for b in policy["bindings"]) and int(q.query.get("optionsRequestedPolicyVersion")
                                                                       or 1) < 3:
            return google_error(400, "Bucket has a condition in its IAM policy: requested policy version must be 3 "
                                     "or greater", "invalid")
        return 200, {"kind": "storage#policy", "resourceId": f"projects/_/buckets/{found['name']}",
                     **json.loads(json.dumps(policy))}

    def _bucket_set_policy(self, q: Request) -> tuple[int, Any]:
        found, error = self._found_bucket(q, "storage.buckets.setIamPolicy")
        if error:
            return error
        policy, current = q.body or {}, self.bucket_policies[found["name"]]
        if policy.get("etag") and policy["etag"] != current["etag"]:
            return google_error(412, "Precondition Failed", "conditionNotMet")
        if any(b.get("condition") for b in policy.get("bindings", [])):
            if int(policy.get("version") or 1) < 3:
                return google_error(400, "IAM conditions need policy version 3", "invalid")
            if not found["iamConfiguration"]["uniformBucketLevelAccess"]["enabled"]:
                return google_error(400, "IAM conditions need uniform bucket-level access", "invalid")
        self.bucket_policies[found["name"]] = {"version": int(policy.get("version") or 1),
                                               "bindings": policy.get("bindings", []),
                                               "etag": f"C{secrets.token_hex(3)}="}
        return 200, {"kind": "storage#policy", "resourceId": f"projects/_/buckets/{found['name']}",
                     **json.loads(json.dumps(self.bucket_policies[found["name"]]))}

    def _objects_list(self, q: Request) -> tuple[int, Any]:
        found, error = self._found_bucket(q, "storage.objects.list")
        if error:
            return error
        prefix = q.query.get("prefix", "")
        return 200, {"kind": "storage#objects", "items": [meta for name, (meta, _) in
                                                           sorted(self.objects[found["name"]].items())
                                                           if name.startswith(prefix)]}

    def _object_get(self, q: Request) -> tuple[int, Any]:
        found, error = self._found_bucket(q, "storage.objects.get", q.groups["object"])
        if error:
            return error
        item = self.objects[found["name"]].get(q.groups["object"])
        if item is None:
            return google_error(404, f"No such object: {found['name']}/{q.groups['object']}", "notFound")
        meta, data = item
        return (200, Media(data, meta["contentType"])) if q.query.get("alt") == "media" else (200, meta)

    def _object_delete(self, q: Request) -> tuple[int, Any]:
        found, error = self._found_bucket(q, "storage.objects.delete", q.groups["object"])
        if error:
            return error
        if self.objects[found["name"]].pop(q.groups["object"], None) is None:
            return google_error(404, f"No such object: {found['name']}/{q.groups['object']}", "notFound")
        return 204, {}

    def _object_upload(self, q: Request) -> tuple[int, Any]:
        name = q.query.get("name", "")
        if q.query.get("uploadType") != "media" or not name:
            return google_error(400, "the fake takes media uploads with a name only", "invalid")
        found, error = self._found_bucket(q, "storage.objects.create", name)
        if error:
            return error
        objects = self.objects[found["name"]]
        present = objects.get(name)
        wanted = q.query.get("ifGenerationMatch")
        if wanted is not None and wanted != (present[0]["generation"] if present else "0"):
            return google_error(412, "At least one of the pre-conditions you specified did not hold.",
                                "conditionNotMet")
        if present is not None:  # replacing an object takes delete too
            denied = self._storage_caller(q, "storage.objects.delete", found["name"], name)
            if denied:
                return denied
        generation = str(next(self._ids))
        now = _now()
        meta = {"kind": "storage#object", "id": f"{found['name']}/{name}/{generation}", "name": name,
                "bucket": found["name"], "generation": generation, "metageneration": "1",
                "contentType": q.headers.get("content-type", "application/octet-stream"),
                "size": str(len(q.raw)), "timeCreated": now, "updated": now}
        objects[name] = (meta, q.raw)
        return 200, meta


_OBJECTS_READ = ("storage.objects.get", "storage.objects.list")
_OBJECTS_ALL = (*_OBJECTS_READ, "storage.objects.create", "storage.objects.delete", "storage.objects.update")
_BUCKET_ALL = ("storage.buckets.get", "storage.buckets.update", "storage.buckets.getIamPolicy",
               "storage.buckets.setIamPolicy", "storage.buckets.create", "storage.buckets.delete")
# Cloud Storage's predefined roles, the permissions of theirs the fake checks.
STORAGE_ROLES: dict[str, tuple[str, ...]] = {
    "roles/storage.objectViewer": _OBJECTS_READ,
    "roles/storage.objectCreator": ("storage.objects.create",),
    "roles/storage.objectUser": _OBJECTS_ALL,
    "roles/storage.objectAdmin": _OBJECTS_ALL,
    "roles/storage.admin": (*_OBJECTS_ALL, *_BUCKET_ALL),
    "roles/storage.legacyBucketReader": ("storage.buckets.get", "storage.objects.list"),
    "roles/storage.legacyBucketWriter": ("storage.buckets.get", "storage.objects.list", "storage.objects.create",
                                         "storage.objects.delete"),
    "roles/storage.legacyBucketOwner": ("storage.buckets.get", "storage.buckets.update", "storage.buckets.getIamPolicy",
                                        "storage.buckets.setIamPolicy", "storage.objects.list",
                                        "storage.objects.create", "storage.objects.delete"),
}


def _condition_holds(condition: Optional[dict], resource: str) -> bool:
    """An IAM condition, the kind coiled-lab writes: ``resource.name.startsWith("...")``
    terms joined by ``||``; anything else does not hold."""
    if not condition:
        return True
    terms = [t.strip() for t in condition.get("expression", "").split("||")]
    for term in terms:
        match = re.fullmatch(r"""resource\.name\.startsWith\((["'])(.*)\1\)""", term)
        if match and resource.startswith(match.group(2)):
            return True
    return False


def _matches(instance: dict, text: Optional[str]) -> bool:
    """Compute's list filter, the part coiled-lab uses: ``labels.<k> = "<v>"`` terms."""
    for key, value in re.findall(r'labels\.([\w-]+)\s*=\s*"([^"]*)"', text or ""):
        if instance.get("labels", {}).get(key) != value:
            return False
    return True


def _log_match(entry: dict, text: str) -> bool:
    """Cloud Logging's filter, the part coiled-lab uses: ``logName="..."``,
    ``labels."<k>"="<v>"`` and ``timestamp>=``/``>`` terms joined by AND."""
    for field_name, op, value in re.findall(r'(logName|timestamp|labels\.(?:"[^"]+"|[\w-]+))\s*(>=|<=|=|>|<)\s*"([^"]*)"',
                                            text):
        if field_name == "logName":
            if entry["logName"] != value:
                return False
        elif field_name == "timestamp":
            have, want = _time(entry["timestamp"]), _time(value)
            if not {">=": have >= want, ">": have > want, "<=": have <= want, "<": have < want, "=": have == want}[op]:
                return False
        elif entry["labels"].get(field_name.split(".", 1)[1].strip('"')) != value:
            return False
    return True
