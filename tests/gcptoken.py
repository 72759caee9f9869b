"""A local stand-in for Google's OAuth token endpoint and for one Google API, for the
kernel's application-default credentials: a service-account key file whose ``token_uri``
points here (google-auth honours it), so ``google.auth.default()`` and ``refresh()`` in the
kernel run unchanged and cross HTTP.

- ``POST /token``: a JWT-bearer grant signed with the key (checked against its public key)
  is answered with a fresh random ``ya29.`` access token lasting ``lifetime`` seconds.
- ``GET /v1/whoami``: what a Google API does with a bearer token; 200 naming the account
  for a token issued here and not expired, 401 otherwise.
- A bucket in Cloud Storage's JSON API shape (list, object metadata, ``alt=media``
  download), behind the same check, for gcsfs (``GCSFileSystem(endpoint_url=url)``).
"""

from __future__ import annotations

import json
import secrets
import time
from pathlib import Path
from urllib.parse import parse_qs

from .localhttp import JSONHandler, LocalHTTP

ACCOUNT = "kernel-user@kernel-project.iam.gserviceaccount.com"
PROJECT = "kernel-project"
BUCKET, OBJECT, CONTENT = "user-data", "hello.txt", b"hello from GCS\n"
GOOGLE_AUDIENCE = "https://oauth2.googleapis.com/token"  # what google-auth signs grants for, whatever token_uri


class TokenEndpoint(LocalHTTP):
    def __init__(self, lifetime: int = 3600) -> None:
        from cryptography.hazmat.primitives import serialization
        from cryptography.hazmat.primitives.asymmetric import rsa

        self.lifetime = lifetime
        self.issued: list[dict] = []  # {"token", "expires"} in order
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self.private_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                             serialization.NoEncryption()).decode()
        self.public_pem = key.public_key().public_bytes(serialization.Encoding.PEM,
                                                        serialization.PublicFormat.SubjectPublicKeyInfo)
        super().__init__()

    def key_file(self, path: Path) -> Path:
        """A service-account key file, as the user's GOOGLE_APPLICATION_CREDENTIALS."""
        path.write_text(json.dumps({
            "type": "service_account", "project_id": PROJECT, "private_key_id": secrets.token_hex(20),
            "private_key": self.private_pem, "client_email": ACCOUNT, "client_id": "1" * 21,
            "token_uri": f"{self.url}/token",
        }))
        path.chmod(0o600)
        return path

    def _handler(self):
        endpoint = self

        class Handler(JSONHandler):

            def do_POST(self) -> None:
                from google.auth import jwt

                form = {k: v[0] for k, v in parse_qs(self.rfile.read(int(self.headers["Content-Length"])).decode()).items()}
                endpoint.requests.append({"path": self.path, "grant_type": form.get("grant_type")})
                try:
                    claims = jwt.decode(form["assertion"], certs=endpoint.public_pem, audience=GOOGLE_AUDIENCE)
                except Exception as exc:  # noqa: BLE001 - any bad grant is Google's 400
                    return self.answer(400, {"error": "invalid_grant", "error_description": str(exc)})
                token = "ya29." + secrets.token_urlsafe(48)
                endpoint.issued.append({"token": token, "expires": time.time() + endpoint.lifetime,
                                        "account": claims["iss"], "scope": claims.get("scope")})
                self.answer(200, {"access_token": token, "expires_in": endpoint.lifetime, "token_type": "Bearer"})

            def do_GET(self) -> None:
                bearer = (self.headers.get("Authorization") or "").removeprefix("Bearer ")
                path = self.path.split("?")[0]
                endpoint.requests.append({"path": path, "token": bearer})
                found = [t for t in endpoint.issued if t["token"] == bearer and t["expires"] > time.time()]
                if not found:
                    return self.answer(401, {"error": {"code": 401, "message": "Invalid Credentials"}})
                objects = f"/storage/v1/b/{BUCKET}/o"
                metadata = {"kind": "storage#object", "bucket": BUCKET, "name": OBJECT, "size": str(len(CONTENT)),
                            "contentType": "text/plain", "generation": "1", "updated": "2026-11-23T00:00:00.000Z"}
                if path == "/v1/whoami":
                    return self.answer(200, {"account": found[0]["account"]})
                if path == objects:
                    return self.answer(200, {"kind": "storage#objects", "items": [metadata], "prefixes": []})
                if path == f"{objects}/{OBJECT}":
                    return self.answer(200, metadata)
                if path == f"/download{objects}/{OBJECT}":
                    self.send_response(200)
                    self.send_header("Content-Type", "text/plain")
                    self.send_header("Content-Length", str(len(CONTENT)))
                    self.end_headers()
                    return self.wfile.write(CONTENT)
                self.answer(404, {"error": {"code": 404, "message": f"no such object {path}"}})

        return Handler
