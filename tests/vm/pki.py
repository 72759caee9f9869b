"""The emulator's certificate authority, for the pull-through cache of package files.

VMs download wheels from ``files.pythonhosted.org`` over HTTPS, as they would on a cloud.
To answer those downloads from a disk cache, the egress proxy terminates that TLS itself
with a certificate made for the host by this CA; the VMs trust the CA because the
emulator adds it to their CA bundle (a real image trusts the real CAs). The CA is made
once and cached beside the VM image, so repeated sessions share it; server certificates
are made per session (cheap with P-256 keys).
"""

from __future__ import annotations

import datetime
import fcntl
import os
import ssl
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

HOST_BUNDLE = Path("/etc/ssl/certs/ca-certificates.crt")


@dataclass(frozen=True)
class CA:
    cert_pem: bytes
    key_pem: bytes

    @property
    def cert(self) -> x509.Certificate:
        return x509.load_pem_x509_certificate(self.cert_pem)

    def server_context(self, host: str) -> ssl.SSLContext:
        """A TLS server context presenting a certificate for ``host``, offering http/1.1 only."""
        cert_pem, key_pem = self.issue(host)
        # ssl loads keys from files only; the file lives for the duration of the load
        with tempfile.NamedTemporaryFile(prefix="clab-tls-", suffix=".pem") as chain:
            chain.write(cert_pem + key_pem)
            chain.flush()
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            context.load_cert_chain(chain.name)
        context.set_alpn_protocols(["http/1.1"])
        return context

    def issue(self, host: str) -> tuple[bytes, bytes]:
        """A server certificate for ``host`` (PEM certificate, PEM key), valid for 30 days."""
        ca_cert = self.cert
        ca_key = serialization.load_pem_private_key(self.key_pem, password=None)
        key = ec.generate_private_key(ec.SECP256R1())
        now = datetime.datetime.now(datetime.timezone.utc)
        cert = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, host)]))
            .issuer_name(ca_cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(hours=1))
            .not_valid_after(now + datetime.timedelta(days=30))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName(host)]), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=True, key_encipherment=False, content_commitment=False,
                                         data_encipherment=False, key_agreement=False, key_cert_sign=False,
                                         crl_sign=False, encipher_only=False, decipher_only=False), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
            .sign(ca_key, hashes.SHA256())
        )
        key_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                    serialization.NoEncryption())
        return cert.public_bytes(serialization.Encoding.PEM), key_pem


def emulator_ca(directory: Path) -> CA:
    """The cached CA under ``directory`` (made on first use, under a lock; certificate and
    key in one file written atomically, so they always match)."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "emulator-ca.pem"
    with open(directory / "emulator-ca.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # held for milliseconds: making a key is quick
        ca = _load(path)
        if ca is None or _expiring(ca):
            ca = CA(*_make_ca())
            _write(path, ca.cert_pem + ca.key_pem, 0o600)
        return ca


def vm_bundle(ca: CA) -> bytes:
    """The CA bundle a VM gets: this machine's (its registries' TLS goes through a CA only it
    holds) plus the emulator's CA (the cache's certificates)."""
    return HOST_BUNDLE.read_bytes().rstrip(b"\n") + b"\n" + ca.cert_pem


def _make_ca() -> tuple[bytes, bytes]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "coiled-lab tests"),
                      x509.NameAttribute(NameOID.COMMON_NAME, "coiled-lab VM emulator CA")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(days=3650))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=True, key_encipherment=False, content_commitment=False,
                                     data_encipherment=False, key_agreement=False, key_cert_sign=True,
                                     crl_sign=True, encipher_only=False, decipher_only=False), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    key_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
    return cert.public_bytes(serialization.Encoding.PEM), key_pem


def _load(path: Path) -> Optional[CA]:
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return None
    split = data.find(b"-----BEGIN PRIVATE KEY-----")
    if split <= 0:
        return None
    return CA(data[:split], data[split:])


def _expiring(ca: CA) -> bool:
    try:
        cert = ca.cert
    except ValueError:
        return True
    left = cert.not_valid_after_utc - datetime.datetime.now(datetime.timezone.utc)
    return left < datetime.timedelta(days=60)


def _write(path: Path, data: bytes, mode: int) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}")
    with open(tmp, "wb") as out:
        os.fchmod(out.fileno(), mode)
        out.write(data)
    os.replace(tmp, path)
