"""moto in a process of its own, authorizing every request with IAM as AWS does for the calls
coiled-lab makes: the printed policies are tested against this.

Why a process of its own: moto keeps "enforce IAM" (``/moto-api/reset-auth``) in module
globals, shared by every moto server of a process, and the other AWS tests run theirs in
the pytest process. Here enforcement is this server's alone.

moto 5.2 checks a request's action against the caller's policies, but differs from AWS
where coiled-lab's policies depend on it. Patched here, in this process only:

- **Resources.** moto checks a statement's ``Resource`` only for S3 and for existing IAM
  roles; for every other request the resource is ``*``, which no ARN pattern matches, so
  a statement naming a log group or a parameter would never allow anything. Here a request
  is authorized on the ARNs AWS authorizes it on: CloudWatch Logs on its log group
  (``log-group:<name>:*``, the form CloudWatch Logs gives a group's ARN), or on its log
  stream for the actions on a stream's events (:data:`STREAM_ACTIONS`),
  SSM on each parameter asked for (public ones have no account), IAM on the role or the
  instance profile named, whether it exists yet or not. EC2 stays ``*`` (coiled-lab's EC2
  statements name no resources: their scope is in conditions, which moto ignores).
- **S3 action names.** moto names a ``HeadBucket`` ``s3:HeadBucket`` (AWS: ``s3:ListBucket``)
  and a public access block ``PutPublicAccessBlock`` (AWS: ``s3:PutBucketPublicAccessBlock``).
- **The Price List API**, which moto lacks: ``GetProducts`` is authorized by moto's own
  IAM check, then forwarded to the price list stand-in (:mod:`tests.pricelist`).

Every authorization is recorded (principal, action, resource, and the error of a refusal)
and listed as JSON at ``GET /_iam/log``: a refusal the product swallows (a price falling
back to the snapshot, an absent object) is still seen, and so is every action a user used.

:class:`IAMMoto` runs it (``python -m tests.aws.iammoto <price list URL>``, which prints
its port, then serves) for a test: IAM users holding given policies, enforcement on and
off, and what was refused.
"""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
import threading
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Optional

LOG: list[dict[str, Optional[str]]] = []
_lock = threading.Lock()


def _record(request: Any, error: Optional[str]) -> None:
    key = getattr(request, "_access_key", None)
    with _lock:
        LOG.append({"principal": getattr(key, "arn", "?"), "action": request._action,
                    "resource": getattr(request, "_resource", "*"), "error": error})


# CloudWatch Logs actions authorized on a log stream; the others naming a group, on the group.
STREAM_ACTIONS = {"PutLogEvents", "GetLogEvents"}


def _logs_resources(response: Any) -> list[str]:
    group, stream = response._get_param("logGroupName"), response._get_param("logStreamName")
    base = f"arn:aws:logs:{response.region}:{response.current_account}:log-group:{group}"
    if group and stream and response._get_action() in STREAM_ACTIONS:
        return [f"{base}:log-stream:{stream}"]
    return [f"{base}:*"] if group else ["*"]


def _ssm_resources(response: Any) -> list[str]:
    names = response._get_param("Names") or [response._get_param("Name")]
    out = []
    for name in filter(None, names):
        path = name if name.startswith("/") else f"/{name}"
        account = "" if path.startswith("/aws/") else response.current_account  # AWS's public parameters
        out.append(f"arn:aws:ssm:{response.region}:{account}:parameter{path}")
    return out or ["*"]


def _iam_resource(response: Any) -> str:
    profile, role = response._get_param("InstanceProfileName"), response._get_param("RoleName")
    if profile:
        return f"arn:aws:iam::{response.current_account}:instance-profile/{profile}"
    return f"arn:aws:iam::{response.current_account}:role/{role}" if role else "*"


def patch() -> None:
    """Make this process's moto authorize as described above."""
    from moto.core.authorization import ActionAuthenticatorMixin
    from moto.iam import access_control
    from moto.iam.responses import IamResponse
    from moto.logs.responses import LogsResponse
    from moto.s3.responses import ACTION_MAP
    from moto.ssm.responses import SimpleSystemManagerResponse

    authorize = ActionAuthenticatorMixin._authenticate_and_authorize_normal_action

    def on_each(resources: Callable[[Any], list[str]]) -> Callable[..., None]:
        def check(self: Any, resource: str = "*") -> None:
            for arn in resources(self):
                authorize(self, arn)
        return check

    LogsResponse._authenticate_and_authorize_normal_action = on_each(_logs_resources)
    SimpleSystemManagerResponse._authenticate_and_authorize_normal_action = on_each(_ssm_resources)
    IamResponse._determine_resource = _iam_resource

    ACTION_MAP["BUCKET"]["HEAD"]["DEFAULT"] = "ListBucket"
    for method, action in (("GET", "GetBucketPublicAccessBlock"), ("PUT", "PutBucketPublicAccessBlock"),
                           ("DELETE", "PutBucketPublicAccessBlock")):
        ACTION_MAP["BUCKET"][method]["publicAccessBlock"] = action
        ACTION_MAP["BUCKET"][method].pop("public_access_block", None)

    check_permitted = access_control.IAMRequestBase.check_action_permitted

    def check_action_permitted(self: Any, resource: str) -> None:
        self._resource = resource
        check_permitted(self, resource)  # a refusal is recorded as it is raised
        _record(self, None)

    access_control.IAMRequestBase.check_action_permitted = check_action_permitted
    access_control.IAMRequest._raise_access_denied = _refuse
    access_control.S3IAMRequest._raise_access_denied = _recording(access_control.S3IAMRequest._raise_access_denied,
                                                                   "AccessDenied")
    for cls in (access_control.IAMRequest, access_control.S3IAMRequest):
        for name, error in (("_raise_invalid_access_key", "InvalidKey"),
                            ("_raise_signature_does_not_match", "SignatureDoesNotMatch")):
            setattr(cls, name, _recording(getattr(cls, name), error))


def _recording(raise_error: Callable[..., None], error: str) -> Callable[..., None]:
    def raising(self: Any, *args: Any) -> None:
        _record(self, error)
        raise_error(self, *args)
    return raising


def _refuse(request: Any) -> None:
    """AWS's refusal: in the service's protocol (JSON for CloudWatch Logs, SSM, the Price
    List API), naming the action and the resource."""
    from moto.core.exceptions import AccessDeniedError, JsonRESTError

    _record(request, "AccessDenied")
    action = f"{request._action} on resource: {getattr(request, '_resource', '*')}"
    if "X-Amz-Target" not in request._headers:
        raise AccessDeniedError(user_arn=request._access_key.arn, action=action)
    error = JsonRESTError("AccessDeniedException", f"User: {request._access_key.arn} is not authorized to perform: "
                                                   f"{action}")
    error.code = 403
    raise error


def _enforcing() -> bool:
    from moto import settings
    from moto.core.authorization import ActionAuthenticatorMixin

    return ActionAuthenticatorMixin.request_count >= settings.INITIAL_NO_AUTH_ACTION_COUNT


def _headers(environ: dict[str, Any]) -> dict[str, str]:
    headers = {k[5:].replace("_", "-").title(): v for k, v in environ.items() if k.startswith("HTTP_")}
    for key in ("CONTENT_TYPE", "CONTENT_LENGTH"):
        if environ.get(key):
            headers[key.replace("_", "-").title()] = environ[key]
    return headers


def app(price_list: str) -> Callable[..., Iterable[bytes]]:
    """moto's WSGI application, with its authorizations listed and the Price List API in front."""
    from moto.core import DEFAULT_ACCOUNT_ID
    from moto.iam.access_control import IAMRequest
    from moto.moto_server.werkzeug_app import DomainDispatcherApplication, create_backend_app
    from werkzeug.exceptions import HTTPException

    moto = DomainDispatcherApplication(create_backend_app)

    def pricing(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        body = environ["wsgi.input"].read(int(environ.get("CONTENT_LENGTH") or 0))
        headers = _headers(environ)
        if _enforcing():
            try:
                request = IAMRequest(account_id=DEFAULT_ACCOUNT_ID, method=environ["REQUEST_METHOD"],
                                     path=environ.get("PATH_INFO") or "/", data={}, body=body, headers=headers,
                                     action=headers.get("X-Amz-Target", "").rsplit(".", 1)[-1])
                request.check_signature()
                request.check_action_permitted("*")  # the Price List API has no resources
            except HTTPException as exc:  # moto's refusal; the Price List API answers JSON
                out = json.dumps({"__type": getattr(exc, "error_type", "AccessDenied"),
                                  "message": getattr(exc, "message", str(exc))}).encode()
                start_response(f"{exc.code} Refused", [("Content-Type", "application/x-amz-json-1.1"),
                                                       ("Content-Length", str(len(out)))])
                return [out]
        forwarded = urllib.request.Request(price_list, body, {"Content-Type": headers.get("Content-Type", ""),
                                                              "X-Amz-Target": headers.get("X-Amz-Target", "")})
        with urllib.request.urlopen(forwarded, timeout=30) as answer:
            out = answer.read()
        start_response("200 OK", [("Content-Type", "application/x-amz-json-1.1"), ("Content-Length", str(len(out)))])
        return [out]

    def log(start_response: Callable[..., Any]) -> Iterable[bytes]:
        with _lock:
            out = json.dumps(LOG).encode()
        start_response("200 OK", [("Content-Type", "application/json"), ("Content-Length", str(len(out)))])
        return [out]

    def serve(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        if environ.get("PATH_INFO") == "/_iam/log":
            return log(start_response)
        scope = environ.get("HTTP_AUTHORIZATION", "").split("Credential=", 1)[-1].split(",", 1)[0].split("/")
        if len(scope) >= 4 and scope[3] == "pricing":
            return pricing(environ, start_response)
        return moto(environ, start_response)

    return serve


def main() -> None:
    import logging

    from werkzeug.serving import make_server

    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # a line per request otherwise
    patch()
    server = make_server("127.0.0.1", 0, app(sys.argv[1]), threaded=True)
    print(server.server_address[1], flush=True)
    server.serve_forever()


# -- the test's side ------------------------------------------------------------------------
ADMIN = {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "*", "Resource": "*"}]}


@dataclass(frozen=True)
class Keys:
    """An IAM user's access key, or a role session's (with its token)."""

    user: str
    access_key: str
    secret_key: str
    token: Optional[str] = None

    def env(self) -> dict[str, str]:
        """The environment variables boto3 (and coiled-lab) take credentials from."""
        return {"AWS_ACCESS_KEY_ID": self.access_key, "AWS_SECRET_ACCESS_KEY": self.secret_key}


class IAMMoto:
    """The server above in a process of its own, with an ``admin`` user who may do anything;
    IAM is not enforced until :meth:`enforce`."""

    def __init__(self, price_list: str, region: str):
        self.region = region
        self.process = subprocess.Popen([sys.executable, "-m", "tests.aws.iammoto", price_list],
                                        cwd=Path(__file__).parents[2], stdout=subprocess.PIPE, text=True)
        port = self.process.stdout.readline().strip()
        if not port.isdigit():
            raise RuntimeError(f"the IAM-enforcing moto did not start (exit code {self.process.wait()}; see its stderr)")
        self.url = f"http://127.0.0.1:{port}"
        # Before enforcement any key may act: the admin is made with a made-up one.
        self.admin = self._user(Keys("-", "AKIAIAMMOTOBOOTSTRAP", "-"), "admin", ADMIN)

    def client(self, service: str, keys: Optional[Keys] = None):
        """A boto3 client of this server, as ``keys`` (default: the admin's)."""
        import boto3

        keys = keys or self.admin
        return boto3.client(service, region_name=self.region, endpoint_url=self.url, aws_access_key_id=keys.access_key,
                            aws_secret_access_key=keys.secret_key, aws_session_token=keys.token)

    def user(self, name: str, policy: dict[str, Any]) -> Keys:
        """A new IAM user holding ``policy`` (a managed policy of its own) and nothing else."""
        return self._user(self.admin, name, policy)

    def _user(self, by: Keys, name: str, policy: dict[str, Any]) -> Keys:
        iam = self.client("iam", by)
        iam.create_user(UserName=name)
        arn = iam.create_policy(PolicyName=name, PolicyDocument=json.dumps(policy))["Policy"]["Arn"]
        iam.attach_user_policy(UserName=name, PolicyArn=arn)
        key = iam.create_access_key(UserName=name)["AccessKey"]
        return Keys(name, key["AccessKeyId"], key["SecretAccessKey"])

    def enforce(self, on: bool = True) -> None:
        """Authorize every request from now on (``on``), or none (moto's default)."""
        request = urllib.request.Request(f"{self.url}/moto-api/reset-auth", b"0" if on else b"inf",
                                         {"Content-Type": "text/plain"}, method="POST")
        urllib.request.urlopen(request, timeout=30).close()

    @contextlib.contextmanager
    def unenforced(self) -> Iterator[None]:
        """What only AWS itself may do (EC2 assuming the instance role), done meanwhile."""
        self.enforce(False)
        try:
            yield
        finally:
            self.enforce(True)

    def log(self, user: Optional[str] = None) -> list[dict[str, Optional[str]]]:
        """Every authorization so far (of ``user``, an IAM user or role session name, if given)."""
        with urllib.request.urlopen(f"{self.url}/_iam/log", timeout=30) as answer:
            found = json.loads(answer.read())
        return [r for r in found if user is None or r["principal"].rsplit("/", 1)[-1] == user]

    def refused(self, user: Optional[str] = None) -> list[dict[str, Optional[str]]]:
        """Every refusal so far (of ``user``, if given)."""
        return [r for r in self.log(user) if r["error"]]

    def used(self, user: str) -> set[str]:
        """The actions ``user`` was allowed."""
        return {r["action"] for r in self.log(user) if not r["error"]}

    def close(self) -> None:
        self.process.terminate()
        self.process.wait(30)


if __name__ == "__main__":
    main()
