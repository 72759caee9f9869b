"""Where the server's cloud credentials come from, as GET /credentials reports it: real
botocore and google-auth reading real profile and key files, and not one network call."""

from __future__ import annotations

import json
import socket
import stat
import sys
from pathlib import Path

import pytest
from google.auth.exceptions import DefaultCredentialsError
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from coiled_lab_server.credentials import Credentials
from coiled_lab_server.errors import BadRequest

SECRET = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"


@pytest.fixture(autouse=True)
def clean_cloud_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """No ambient credentials, and any attempt to open a connection fails the test."""
    for key in list(__import__("os").environ):
        if key.startswith(("AWS_", "GOOGLE_", "CLOUDSDK_")):
            monkeypatch.delenv(key)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "aws-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "aws-credentials"))
    monkeypatch.setenv("CLOUDSDK_CONFIG", str(tmp_path / "gcloud"))

    def refuse(self, address):
        raise AssertionError(f"credential status made a network call to {address}")

    monkeypatch.setattr(socket.socket, "connect", refuse)


def test_environment_secrets_leave_the_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("AWS_DEFAULT_REGION", "eu-central-1")
    environ = {"AWS_ACCESS_KEY_ID": "AKIAENVENVENVENV1234", "AWS_SECRET_ACCESS_KEY": SECRET, "AWS_PROFILE": "x"}
    creds = Credentials(tmp_path, environ)
    assert environ == {"AWS_PROFILE": "x"}  # what kernels would inherit keeps no secret
    assert creds.status()["aws"] == {
        "configured": True, "source": "environment", "account": None, "region": "eu-central-1", "key_id_last4": "1234",
    }
    assert creds.botocore_session().get_credentials().secret_key == SECRET  # the server still has them


@pytest.mark.parametrize(
    "profile, source, account, last4",
    [
        ("static", "shared-credentials-file", None, "5678"),
        ("role", "assume-role", "123456789012", None),
        ("sso", "sso", "210987654321", None),
        ("proc", "custom-process", None, None),
    ],
)
def test_profiles(tmp_path, monkeypatch, profile, source, account, last4):
    marker = tmp_path / "credential-process-ran"
    (tmp_path / "aws-credentials").write_text(
        f"[static]\naws_access_key_id = AKIASTATICSTATIC5678\naws_secret_access_key = {SECRET}\n"
    )
    (tmp_path / "aws-config").write_text(
        "[profile static]\nregion = us-west-2\n"
        "[profile role]\nrole_arn = arn:aws:iam::123456789012:role/lab\nsource_profile = static\nregion = us-west-2\n"
        "[profile sso]\nsso_account_id = 210987654321\nsso_role_name = Lab\nsso_region = us-east-1\n"
        "sso_start_url = https://example.awsapps.com/start\nregion = us-west-2\n"
        f"[profile proc]\ncredential_process = {sys.executable} -c \"open('{marker}', 'w')\"\nregion = us-west-2\n"
    )
    monkeypatch.setenv("AWS_PROFILE", profile)
    status = Credentials(tmp_path, {}).status()["aws"]
    assert status == {"configured": True, "source": source, "account": account, "region": "us-west-2", "key_id_last4": last4}
    assert SECRET not in json.dumps(status)
    assert not marker.exists()  # reporting a credential process does not run it


def test_nothing_configured(tmp_path):
    status = Credentials(tmp_path, {}).status()
    assert status["aws"]["configured"] is False and "PUT /credentials" in status["aws"]["error"]
    assert status["gcp"]["configured"] is False


def test_missing_profile_is_a_status_not_an_error(tmp_path, monkeypatch):
    monkeypatch.setenv("AWS_PROFILE", "nope")
    status = Credentials(tmp_path, {}).status()["aws"]
    assert status["configured"] is False and "nope" in status["error"]


def test_stored_aws_credentials_win_and_can_be_cleared(tmp_path):
    creds = Credentials(tmp_path, {"AWS_ACCESS_KEY_ID": "AKIAENVENVENVENV1234", "AWS_SECRET_ACCESS_KEY": "x"})
    status = creds.put({
        "provider": "aws", "access_key_id": "AKIASTOREDSTORED9999", "secret_access_key": SECRET,
        "region": "ap-southeast-2", "account": "111122223333",
    })
    assert status["aws"] == {
        "configured": True, "source": "stored", "account": "111122223333", "region": "ap-southeast-2",
        "key_id_last4": "9999",
    }
    assert stat.S_IMODE((tmp_path / "credentials.json").stat().st_mode) == 0o600
    assert creds.botocore_session().get_credentials().secret_key == SECRET
    assert creds.put({"provider": "aws", "clear": True})["aws"]["source"] == "environment"


@pytest.mark.parametrize(
    "body, field",
    [
        ([SECRET], "body"),
        ({"provider": "azure", "secret_access_key": SECRET}, "provider"),
        ({"provider": "aws", "secret_access_key": SECRET}, "access_key_id"),
        ({"provider": "aws", "access_key_id": SECRET, "secret_access_key": SECRET}, "access_key_id"),
        ({"provider": "aws", "access_key_id": "AKIAABCDEFGHIJKLMNOP", "secret_access_key": 7}, "secret_access_key"),
        ({"provider": "aws", "access_key_id": "AKIAABCDEFGHIJKLMNOP", "secret_access_key": SECRET, "region": SECRET}, "region"),
        ({"provider": "aws", "access_key_id": "AKIAABCDEFGHIJKLMNOP", "secret_access_key": SECRET, "extra": 1}, "extra"),
        ({"provider": "aws", "clear": True, "secret_access_key": SECRET}, "clear"),
        ({"provider": "gcp", "service_account": {"type": "service_account", "private_key": SECRET}}, "service_account"),
        ({"provider": "gcp", "service_account": SECRET}, "service_account"),
    ],
)
def test_bad_forms_name_the_field_and_never_repeat_a_value(tmp_path, body, field):
    with pytest.raises(BadRequest) as bad:
        Credentials(tmp_path, {}).put(body)
    assert bad.value.field == field
    assert SECRET not in json.dumps(bad.value.to_json())
    assert not (tmp_path / "credentials.json").exists()


def service_account_key(project: str = "lab-project") -> dict:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()
    return {
        "type": "service_account", "project_id": project, "private_key_id": "0123456789abcdefcafe",
        "private_key": pem, "client_email": f"lab@{project}.iam.gserviceaccount.com",
        "client_id": "1", "token_uri": "https://oauth2.googleapis.com/token",
    }


def test_gcp_sources(tmp_path, monkeypatch):
    creds = Credentials(tmp_path, {})

    gcloud = tmp_path / "gcloud"
    gcloud.mkdir()
    (gcloud / "application_default_credentials.json").write_text(json.dumps(
        {"type": "authorized_user", "client_id": "c", "client_secret": SECRET, "refresh_token": SECRET,
         "quota_project_id": "quota-project"}
    ))
    assert creds.status()["gcp"] == {
        "configured": True, "source": "gcloud", "account": None, "region": None, "key_id_last4": None,
        "type": "authorized_user", "project": "quota-project",
    }

    key_file = tmp_path / "key.json"
    key_file.write_text(json.dumps(service_account_key("env-project")))
    monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", str(key_file))
    status = creds.status()["gcp"]
    assert (status["source"], status["project"], status["key_id_last4"]) == ("environment", "env-project", "cafe")

    key = service_account_key()
    status = creds.put({"provider": "gcp", "service_account": json.dumps(key), "region": "europe-west4"})["gcp"]
    assert status == {
        "configured": True, "source": "stored", "account": "lab@lab-project.iam.gserviceaccount.com",
        "region": "europe-west4", "key_id_last4": "cafe", "type": "service_account", "project": "lab-project",
    }
    assert key["private_key"] not in json.dumps(creds.status())


def test_the_servers_google_key_file_leaves_the_kernels_environment(tmp_path):
    key_file = tmp_path / "server-key.json"
    key_file.write_text(json.dumps(service_account_key("server-project")))
    environ = {"GOOGLE_APPLICATION_CREDENTIALS": str(key_file), "GOOGLE_CLOUD_PROJECT": "server-project"}
    creds = Credentials(tmp_path, environ)
    # A kernel's Application Default Credentials (what send_credentials sends to workers)
    # can no longer be the server's key; the server itself still uses it.
    assert environ == {"GOOGLE_CLOUD_PROJECT": "server-project"}
    assert creds.google_credentials().service_account_email == "lab@server-project.iam.gserviceaccount.com"
    assert creds.status()["gcp"]["source"] == "environment"

    key_file.unlink()  # a 503 through errors.py, naming the file
    with pytest.raises(DefaultCredentialsError, match="server-key.json is unreadable"):
        creds.google_credentials()
