"""Cloud credentials, held by the Jupyter server process and by nothing else.

Three sources, in this order: credentials an admin stored through ``PUT /credentials``
(a 0600 file in the state dir), secret environment variables the server was started
with, and each cloud's standard chain (AWS: profile, SSO, assumed role, instance role;
GCP: application-default credentials).

Secret environment variables are *taken out* of ``os.environ`` before anything of the
extension loads (:mod:`.secret_env`): kernels and terminals inherit the server's
environment, and a kernel must never see a cloud secret (users forward their own data
credentials explicitly). The server keeps them in memory for its own cloud calls
(:meth:`Credentials.botocore_session`).

The stored file is written whole or not at all (a unique temporary file renamed over it),
one writer at a time (an exclusive lock on a file beside it, which threads of this server
and other processes take alike), so concurrent PUT requests never fail and never leave
it half-written.

:meth:`Credentials.status` is what the API shows: where the credentials come from, the
account or project, the region and the last four characters of the key id, all found
without a network call (no STS, no metadata server), and never a secret. The processes
of the same Unix user can still read the 0600 file; separating admins from users needs
separate accounts, which this module does not pretend to provide.
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import tempfile
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any, Iterator, MutableMapping, Optional

from coiled_lab.errors import QUOTED_CHARS, quoted

from . import secret_env
from .errors import BadRequest

FILE_NAME = "credentials.json"
LOCK_NAME = "credentials.lock"

_AWS_KEY_ID = re.compile(r"^[A-Z0-9]{16,128}$")
_AWS_REGION = re.compile(r"^[a-z]{2}(-[a-z]+)+-\d{1,2}$")
_AWS_ACCOUNT = re.compile(r"^\d{12}$")
_GCP_REGION = re.compile(r"^[a-z]+-[a-z]+\d{1,2}$")
_AWS_FIELDS = {"provider", "access_key_id", "secret_access_key", "session_token", "region", "account"}
_GCP_FIELDS = {"provider", "service_account", "region"}
# botocore providers that call the network (or run a program) when asked to load;
# status() recognises them from local signals instead.
_NETWORK_PROVIDERS = ("env", "custom-process", "container-role", "iam-role")


class Credentials:
    """The server's credentials: stored, captured from the environment, or the standard chains."""

    def __init__(self, state_dir: Path, environ: MutableMapping[str, str]):
        """``environ``: the server's secret variables (:func:`.secret_env.claim`), or an
        environment they are taken out of."""
        self.path = Path(state_dir) / FILE_NAME
        self._env = secret_env.take(environ)

    # -- for the server's own cloud calls ------------------------------------------------
    def botocore_session(self):
        """A botocore session with the highest-priority AWS credentials (boto3 wraps it:
        ``boto3.Session(botocore_session=...)``)."""
        import botocore.session

        session = botocore.session.Session()
        stored = self._stored().get("aws")
        if stored:
            session.set_credentials(stored["access_key_id"], stored["secret_access_key"], stored.get("session_token"))
            if stored.get("region"):
                session.set_config_variable("region", stored["region"])
        elif "AWS_ACCESS_KEY_ID" in self._env and "AWS_SECRET_ACCESS_KEY" in self._env:
            session.set_credentials(
                self._env["AWS_ACCESS_KEY_ID"],
                self._env["AWS_SECRET_ACCESS_KEY"],
                self._env.get("AWS_SESSION_TOKEN") or self._env.get("AWS_SECURITY_TOKEN"),
            )
        return session

    def google_credentials(self):
        """Credentials of the service account an admin stored, else of the key file the
        server was started with (GOOGLE_APPLICATION_CREDENTIALS, kept out of kernels'
        environment), else None: the GCP backend then uses Application Default Credentials
        (gcloud's file, the metadata server)."""
        stored = self._stored().get("gcp")
        if not stored:
            key_file = self._env.get("GOOGLE_APPLICATION_CREDENTIALS")
            if key_file:  # what ADC would have read had the environment kept it
                return _google_file(key_file)
            return None
        from google.oauth2 import service_account

        return service_account.Credentials.from_service_account_info(
            stored["service_account"], scopes=["https://www.googleapis.com/auth/cloud-platform"])

    # -- status: what the API may show ------------------------------------------------
    def status(self) -> dict[str, Any]:
        """Where each cloud's credentials come from; never a secret, never a network call."""
        return {"aws": self._aws_status(), "gcp": self._gcp_status()}

    def _aws_status(self) -> dict[str, Any]:
        import botocore.exceptions
        from botocore.credentials import RefreshableCredentials

        stored = self._stored().get("aws")
        try:
            session = self.botocore_session()
            region = session.get_config_variable("region")
        except botocore.exceptions.BotoCoreError as exc:
            return _unconfigured(f"{type(exc).__name__}: {exc}")
        if stored:
            return _configured("stored", stored["access_key_id"], region, stored.get("account"))
        if "AWS_ACCESS_KEY_ID" in self._env:
            return _configured("environment", self._env["AWS_ACCESS_KEY_ID"], region, None)
        try:
            scoped = session.get_scoped_config()
            resolver = session.get_component("credential_provider")
            for name in _NETWORK_PROVIDERS:
                if resolver.get_provider(name) is not None:
                    resolver.remove(name)
            creds = resolver.load_credentials()
        except Exception as exc:  # noqa: BLE001 - a broken profile is a status, not a server error
            return _unconfigured(f"{type(exc).__name__}: {exc}")
        account = _aws_account(scoped)
        if creds is not None:
            # Refreshable credentials would fetch new keys on access: show no key id.
            key_id = None if isinstance(creds, RefreshableCredentials) else creds.access_key
            return _configured(creds.method, key_id, region, account)
        if scoped.get("credential_process"):
            return _configured("custom-process", None, region, account)
        if os.environ.get("AWS_CONTAINER_CREDENTIALS_RELATIVE_URI") or os.environ.get("AWS_CONTAINER_CREDENTIALS_FULL_URI"):
            return _configured("container-role", None, region, account)
        if _dmi("sys_vendor").startswith("Amazon EC2") or _dmi("board_asset_tag").startswith("i-"):
            return _configured("iam-role", None, region, account)
        return _unconfigured("no AWS credentials: set a profile, environment variables, or PUT /credentials")

    def _gcp_status(self) -> dict[str, Any]:
        try:
            from google.auth import _cloud_sdk
        except ImportError:
            return {"configured": False, "available": False, "error": "google-auth is not installed"}
        project = os.environ.get("GOOGLE_CLOUD_PROJECT") or os.environ.get("CLOUDSDK_CORE_PROJECT")
        stored = self._stored().get("gcp")
        if stored:
            info = stored["service_account"]
            return _gcp("stored", info, project, stored.get("region"))
        region = os.environ.get("CLOUDSDK_COMPUTE_REGION")
        for source, path in (
            ("environment", self._env.get("GOOGLE_APPLICATION_CREDENTIALS") or os.environ.get("GOOGLE_APPLICATION_CREDENTIALS")),
            ("gcloud", _cloud_sdk.get_application_default_credentials_path()),
        ):
            if path and os.path.isfile(path):
                try:
                    with open(path) as f:
                        info = json.load(f)
                except (OSError, ValueError) as exc:
                    return _unconfigured(f"{source} credentials file {path} is unreadable: {type(exc).__name__}")
                if isinstance(info, dict):
                    return _gcp(source, info, project, region)
        if "CLOUDSDK_AUTH_ACCESS_TOKEN" in self._env or "GOOGLE_OAUTH_ACCESS_TOKEN" in self._env:
            return {**_configured("access-token", None, region, None), "project": project}
        if _dmi("product_name").startswith("Google Compute Engine"):
            return {**_configured("metadata-server", None, region, None), "project": project}
        return _unconfigured("no GCP credentials: run `gcloud auth application-default login`, or PUT /credentials")

    # -- storing what an admin sends ------------------------------------------------------
    def put(self, body: Any) -> dict[str, Any]:
        """Validate and store (or with ``"clear": true`` forget) one provider's credentials.

        Error messages name the field and never repeat a value: a value may be a secret.
        """
        if not isinstance(body, dict):
            raise BadRequest("expected a JSON object with a 'provider' field", "body")
        provider = body.get("provider")
        if provider not in ("aws", "gcp"):
            raise BadRequest("provider: expected 'aws' or 'gcp'", "provider")
        clear = body.get("clear", False)
        if not isinstance(clear, bool):
            raise BadRequest("clear: expected true or false", "clear")
        if clear and set(body) - {"provider", "clear"}:
            raise BadRequest("clear: give no other field when clearing", "clear")
        entry = None if clear else _validate_aws(body) if provider == "aws" else _validate_gcp(body)
        with self._one_writer():  # read, change and write as one step: no other PUT's change is lost
            stored = self._stored()
            if entry is None:
                stored.pop(provider, None)
            else:
                stored[provider] = entry
            self._write(stored)
        return self.status()

    def _stored(self) -> dict[str, Any]:
        try:
            with open(self.path) as f:
                data = json.load(f)
        except FileNotFoundError:
            return {}
        except ValueError:  # a damaged file holds nothing usable; the next PUT rewrites it
            return {}
        return data if isinstance(data, dict) else {}

    @contextmanager
    def _one_writer(self) -> Iterator[None]:
        """Exclusive while the block runs. Each call opens the lock file anew, so the
        lock also excludes this process's other threads (PUTs run in an executor)."""
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd = os.open(self.path.with_name(LOCK_NAME), os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)  # and with it the lock

    def _write(self, data: dict[str, Any]) -> None:
        """Replace the file in one rename: a reader sees the old contents or the new, whole."""
        fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=f".{FILE_NAME}.", suffix=".tmp")  # 0600
        try:
            with os.fdopen(fd, "w") as f:
                json.dump(data, f)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.path)
        except BaseException:
            with suppress(FileNotFoundError):
                os.unlink(tmp)
            raise


def _google_file(path: str):
    """Credentials from the key file the server was started with. The admin's own file,
    so trusted; google-auth's generic loader warns about untrusted configurations, hence
    the two usual kinds are loaded by their own classes."""
    import warnings

    import google.auth
    from google.auth.exceptions import DefaultCredentialsError
    from google.oauth2 import credentials as user, service_account

    scopes = ["https://www.googleapis.com/auth/cloud-platform"]
    try:
        with open(path) as f:
            kind = json.load(f).get("type")
    except (OSError, ValueError, AttributeError) as exc:
        raise DefaultCredentialsError(
            f"GOOGLE_APPLICATION_CREDENTIALS {path} is unreadable: {type(exc).__name__}") from None
    if kind == "service_account":
        return service_account.Credentials.from_service_account_file(path, scopes=scopes)
    if kind == "authorized_user":
        return user.Credentials.from_authorized_user_file(path, scopes=scopes)
    with warnings.catch_warnings():  # workload identity federation and the like
        warnings.simplefilter("ignore", DeprecationWarning)
        return google.auth.load_credentials_from_file(path, scopes=scopes)[0]


def _validate_aws(body: dict[str, Any]) -> dict[str, Any]:
    _no_unknown(body, _AWS_FIELDS)
    out: dict[str, Any] = {}
    for field, pattern, required, what in (
        ("access_key_id", _AWS_KEY_ID, True, "an access key id such as 'AKIA...' (upper-case letters and digits)"),
        ("secret_access_key", None, True, "the secret access key (a non-empty string)"),
        ("session_token", None, False, "a session token string"),
        ("region", _AWS_REGION, False, "a region such as 'us-east-1'"),
        ("account", _AWS_ACCOUNT, False, "a 12-digit account id"),
    ):
        value = body.get(field)
        if value is None:
            if required:
                raise BadRequest(f"{field}: required; expected {what}", field)
            continue
        if not isinstance(value, str) or not value or len(value) > 4096 or (pattern and not pattern.match(value)):
            raise BadRequest(f"{field}: not valid; expected {what}", field)
        out[field] = value
    return out


def _validate_gcp(body: dict[str, Any]) -> dict[str, Any]:
    _no_unknown(body, _GCP_FIELDS)
    info = body.get("service_account")
    if isinstance(info, str):
        try:
            info = json.loads(info)
        except ValueError:
            raise BadRequest("service_account: not valid JSON; expected a service account key file's contents", "service_account") from None
    if not isinstance(info, dict) or info.get("type") != "service_account":
        raise BadRequest("service_account: expected a service account key (a JSON object with type 'service_account')", "service_account")
    try:
        from google.oauth2 import service_account
    except ImportError:
        raise BadRequest("provider: 'gcp' needs google-auth installed on the server", "provider") from None
    try:
        service_account.Credentials.from_service_account_info(info)  # parses the key; no network
    except Exception:  # noqa: BLE001 - whatever is wrong, the message must not echo the key
        raise BadRequest(
            "service_account: not a usable key; expected client_email, private_key_id, token_uri and a PEM private_key",
            "service_account",
        ) from None
    out: dict[str, Any] = {"service_account": info}
    region = body.get("region")
    if region is not None:
        if not isinstance(region, str) or not _GCP_REGION.match(region):
            raise BadRequest("region: not valid; expected a region such as 'us-central1'", "region")
        out["region"] = region
    return out


def _no_unknown(body: dict[str, Any], allowed: set[str]) -> None:
    unknown = sorted(str(k) for k in set(body) - allowed - {"clear"})
    if unknown:
        raise BadRequest(f"unknown field {quoted(unknown[0])}; allowed fields: {', '.join(sorted(allowed))}",
                         unknown[0][:QUOTED_CHARS])


def _configured(source: str, key_id: Optional[str], region: Optional[str], account: Optional[str]) -> dict[str, Any]:
    return {
        "configured": True,
        "source": source,
        "account": account,
        "region": region,
        "key_id_last4": key_id[-4:] if key_id else None,
    }


def _unconfigured(reason: str) -> dict[str, Any]:
    return {"configured": False, "source": None, "error": reason}


def _gcp(source: str, info: dict[str, Any], project: Optional[str], region: Optional[str]) -> dict[str, Any]:
    key_id = info.get("private_key_id") if isinstance(info.get("private_key_id"), str) else None
    account = info.get("client_email") if isinstance(info.get("client_email"), str) else None
    found_project = info.get("project_id") or info.get("quota_project_id")
    return {
        **_configured(source, key_id, region, account),
        "type": info.get("type") if isinstance(info.get("type"), str) else None,
        "project": project or (found_project if isinstance(found_project, str) else None),
    }


def _aws_account(scoped: dict[str, Any]) -> Optional[str]:
    """The account id when the profile names it: SSO account or the role's ARN."""
    if isinstance(scoped.get("sso_account_id"), str):
        return scoped["sso_account_id"]
    arn = scoped.get("role_arn") or os.environ.get("AWS_ROLE_ARN")
    match = re.match(r"^arn:aws[\w-]*:iam::(\d{12}):", arn or "")
    return match.group(1) if match else None


def _dmi(name: str) -> str:
    """A DMI field of this machine (tells EC2 and GCE apart without a network call)."""
    try:
        return Path("/sys/devices/virtual/dmi/id", name).read_text().strip()
    except OSError:
        return ""
