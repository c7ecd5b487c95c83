"""The lab API server's TLS: a CA of its own and a loopback server certificate it signs.

Both clients verify strictly: Go (kubectl) ignores the CN and needs the SANs, and Python 3.13 with
urllib3 2.x (VERIFY_X509_STRICT) rejects a CA without a critical keyUsage. So the CA carries
basicConstraints CA:TRUE and keyUsage keyCertSign/cRLSign (both critical), and the server certificate
SAN IP:127.0.0.1, IP:::1, DNS:localhost with EKU serverAuth.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

VALIDITY = datetime.timedelta(days=365)
SERVER_NAMES = ("localhost",)
SERVER_IPS = ("127.0.0.1", "::1")


@dataclass(frozen=True, slots=True)
class TlsFiles:
    """Where the CA and the server's certificate and key were written, and the CA's PEM."""

    ca_file: Path
    cert_file: Path
    key_file: Path
    ca_pem: bytes


def _name(common_name: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "podnat lab"),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
        ]
    )


def make_tls(directory: Path, extra_ips: tuple[str, ...] = (), reuse: bool = False) -> TlsFiles:
    """A fresh CA and server certificate in `directory` (ca.crt, server.crt, server.key (0600)); the
    certificate also names `extra_ips` (the lab's node IP, where the agent pod reaches the server).
    With `reuse`, files already there are kept (a restarted server keeps its CA: clients that loaded
    the kubeconfig before the restart, like the agent, still trust it)."""
    if reuse and all((directory / name).is_file() for name in ("ca.crt", "server.crt", "server.key")):
        return TlsFiles(
            directory / "ca.crt",
            directory / "server.crt",
            directory / "server.key",
            (directory / "ca.crt").read_bytes(),
        )
    directory.mkdir(parents=True, exist_ok=True)
    now = datetime.datetime.now(datetime.timezone.utc)
    not_before = now - datetime.timedelta(minutes=5)  # tolerate a little clock skew between processes

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = _name("podnat-lab-ca")
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(now + VALIDITY)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )

    key = ec.generate_private_key(ec.SECP256R1())
    sans: list[x509.GeneralName] = [x509.IPAddress(ipaddress.ip_address(ip)) for ip in (*SERVER_IPS, *extra_ips)]
    sans += [x509.DNSName(name) for name in SERVER_NAMES]
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name("podnat-lab-apiserver"))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(now + VALIDITY)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )

    ca_pem = ca_cert.public_bytes(serialization.Encoding.PEM)
    files = TlsFiles(directory / "ca.crt", directory / "server.crt", directory / "server.key", ca_pem)
    files.ca_file.write_bytes(ca_pem)
    files.cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    fd = os.open(files.key_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as out:
        out.write(key_pem)
    return files
