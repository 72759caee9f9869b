"""Per-cluster TLS material: every dask connection of a cluster is encrypted and
authenticated with a certificate made for that cluster alone.

One self-signed certificate serves as CA, server and client certificate, as
``distributed.security.Security.temporary`` does, but written to files (0600) so that
detached processes and VMs can use it, and handed to kernels only through the
authenticated API. Elliptic-curve keys: generating one takes about a millisecond.
"""

from __future__ import annotations

import datetime
import os
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class TLSMaterial:
    cert_pem: str
    key_pem: str

    @classmethod
    def generate(cls, cluster_id: str, days: int = 365) -> "TLSMaterial":
        from cryptography import x509
        from cryptography.hazmat.primitives import hashes, serialization
        from cryptography.hazmat.primitives.asymmetric import ec
        from cryptography.x509.oid import NameOID

        key = ec.generate_private_key(ec.SECP256R1())
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"coiled-lab-{cluster_id}")])
        now = datetime.datetime.now(datetime.timezone.utc)
        cert = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=days))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256())
        )
        return cls(
            cert_pem=cert.public_bytes(serialization.Encoding.PEM).decode(),
            key_pem=key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            ).decode(),
        )

    def write(self, directory: Path) -> tuple[Path, Path]:
        """Write ``tls-cert.pem`` and ``tls-key.pem`` (both 0600); return their paths."""
        directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        paths = directory / "tls-cert.pem", directory / "tls-key.pem"
        for path, text in zip(paths, (self.cert_pem, self.key_pem)):
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w") as f:
                f.write(text)
        return paths

    @classmethod
    def read(cls, directory: Path) -> "TLSMaterial":
        return cls(
            cert_pem=(directory / "tls-cert.pem").read_text(),
            key_pem=(directory / "tls-key.pem").read_text(),
        )

    def security(self):
        """A ``distributed.Security`` that requires TLS, with the PEM text inline."""
        from distributed.security import Security

        return Security(
            tls_ca_file=self.cert_pem,
            tls_client_cert=self.cert_pem,
            tls_client_key=self.key_pem,
            tls_scheduler_cert=self.cert_pem,
            tls_scheduler_key=self.key_pem,
            tls_worker_cert=self.cert_pem,
            tls_worker_key=self.key_pem,
            require_encryption=True,
        )
