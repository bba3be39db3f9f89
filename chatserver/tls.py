"""A local certificate authority and a server certificate, for TLS without a public CA.

No Django imports (`manage.py broker_prepare` and the test suite use it). When no
certificate is configured (`MQTT_TLS_CERT` / `MQTT_TLS_KEY`), `make run` makes, once,
under `DATA_DIR/tls/`:

    ca.pem         the CA's certificate: give it to the phones and the simulator (`--ca`)
    ca-key.pem     the CA's private key (0600): only used to sign the server certificate
    server.pem     the server's certificate, for localhost, 127.0.0.1, ::1, this machine's
                   names and any `extra_names` (e.g. MQTT_PUBLIC_HOST)
    server-key.pem its private key (0600)

The server certificate is made again (by the same CA) when a name it should cover is
missing, so a new MQTT_PUBLIC_HOST just works; the CA stays, so phones that trust it keep
trusting the server. ECDSA P-256 keys; the CA is valid 10 years, the server certificate
about 2 (below what Android and browsers accept for a locally trusted CA's leaf).
"""

from __future__ import annotations

import datetime
import ipaddress
import os
import socket
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

CA_DAYS = 3650
SERVER_DAYS = 825


@dataclass(frozen=True)
class ServerTls:
    """Where a server's certificate (chain) and key are, and the CA that signed it (None
    for a certificate of a public CA, which clients trust already)."""

    cert: Path
    key: Path
    ca: Path | None = None


def machine_names() -> list[str]:
    """The names clients may use for this machine: loopback and its own host names."""
    names = ["localhost", "127.0.0.1", "::1"]
    for name in (socket.gethostname(), socket.getfqdn()):
        if name and name not in names:
            names.append(name)
    return names


def local_server_tls(tls_dir: Path, *, extra_names: list[str] = ()) -> ServerTls:
    """The local CA and a server certificate under `tls_dir`, made when missing (see the
    module docstring); idempotent."""
    tls_dir = Path(tls_dir)
    tls_dir.mkdir(parents=True, exist_ok=True)
    ca_path, ca_key_path = tls_dir / "ca.pem", tls_dir / "ca-key.pem"
    cert_path, key_path = tls_dir / "server.pem", tls_dir / "server-key.pem"
    names = list(dict.fromkeys([*machine_names(), *(n for n in extra_names if n)]))

    if ca_path.exists() and ca_key_path.exists():
        ca_cert = x509.load_pem_x509_certificate(ca_path.read_bytes())
        ca_key = serialization.load_pem_private_key(ca_key_path.read_bytes(), password=None)
    else:
        ca_key = ec.generate_private_key(ec.SECP256R1())
        ca_cert = _ca_certificate(ca_key)
        _write_private(ca_key_path, _key_pem(ca_key))
        _write_public(ca_path, ca_cert.public_bytes(serialization.Encoding.PEM))

    if not (cert_path.exists() and key_path.exists() and _covers(cert_path, names, ca_cert)):
        key = ec.generate_private_key(ec.SECP256R1())
        cert = _server_certificate(key, names, ca_cert, ca_key)
        _write_private(key_path, _key_pem(key))
        _write_public(cert_path, cert.public_bytes(serialization.Encoding.PEM))
    return ServerTls(cert=cert_path, key=key_path, ca=ca_path)


def _ca_certificate(key: ec.EllipticCurvePrivateKey) -> x509.Certificate:
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"chat backend local CA ({socket.gethostname()})")])
    now = datetime.datetime.now(datetime.UTC)
    return (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=CA_DAYS))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False, content_commitment=False, key_encipherment=False,
                data_encipherment=False, key_agreement=False, key_cert_sign=True, crl_sign=True,
                encipher_only=False, decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )


def _server_certificate(key, names: list[str], ca_cert: x509.Certificate, ca_key) -> x509.Certificate:
    now = datetime.datetime.now(datetime.UTC)
    return (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0])]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=SERVER_DAYS))
        .add_extension(x509.SubjectAlternativeName([_general_name(n) for n in names]), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_cert.public_key()), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )


def _general_name(name: str) -> x509.GeneralName:
    try:
        return x509.IPAddress(ipaddress.ip_address(name))
    except ValueError:
        return x509.DNSName(name)


def _covers(cert_path: Path, names: list[str], ca_cert: x509.Certificate) -> bool:
    """Whether the certificate there was signed by this CA, is valid a while longer, and
    names every one of `names`."""
    try:
        cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except (ValueError, x509.ExtensionNotFound):
        return False
    have = {str(v) for v in san.get_values_for_type(x509.DNSName)}
    have |= {str(v) for v in san.get_values_for_type(x509.IPAddress)}
    wanted = {str(ipaddress.ip_address(n)) if _is_ip(n) else n for n in names}
    soon = datetime.datetime.now(datetime.UTC) + datetime.timedelta(days=30)
    return cert.issuer == ca_cert.subject and wanted <= have and cert.not_valid_after_utc > soon


def _is_ip(name: str) -> bool:
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return False
    return True


def _key_pem(key) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def _write_private(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.replace(tmp, path)


def _write_public(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_bytes(data)
    os.chmod(tmp, 0o644)
    os.replace(tmp, path)
