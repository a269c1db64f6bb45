"""A private certificate authority for ECHO's brokers and API (the ``cryptography`` package).

``create_ca`` makes a self-signed CA (EC P-256, ``ca.pem`` + ``ca.key``); ``issue_server``
signs a server certificate for the names and addresses clients dial (Mosquitto, NATS,
Redis and the REST API share one by default). Private keys are written 0600 through
``secretfiles``; certificates are public (0644).

Bring your own CA: put its certificate and key (PEM, unencrypted) at ``ca.pem`` /
``ca.key`` in the directory before ``echoctl pki init`` and it signs the server
certificate with them; or put your own ``server.pem`` / ``server.key`` there too and
nothing is generated (see docs/security.md).
"""

from __future__ import annotations

import datetime as dt
import ipaddress
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.types import CertificateIssuerPrivateKeyTypes
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from .errors import EchoError
from .secretfiles import check_private, write_public, write_secret

CA_DAYS = 3650
SERVER_DAYS = 825
DEFAULT_HOSTS = ("localhost", "127.0.0.1", "::1")


class PkiError(EchoError):
    """A CA or certificate file is missing, unreadable or does not fit."""


@dataclass(frozen=True)
class KeyPair:
    cert: Path
    key: Path


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _write_key(path: Path, key: ec.EllipticCurvePrivateKey, owner: tuple[int, int] | None = None) -> None:
    pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    write_secret(path, pem, owner=owner)


def _write_cert(path: Path, cert: x509.Certificate) -> None:
    write_public(path, cert.public_bytes(serialization.Encoding.PEM))


def create_ca(directory: Path, *, name: str = "ECHO CA", days: int = CA_DAYS) -> KeyPair:
    """A new self-signed CA at ``directory/ca.pem`` and ``directory/ca.key`` (0600)."""
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = _now()
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                key_cert_sign=True,
                crl_sign=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    pair = KeyPair(directory / "ca.pem", directory / "ca.key")
    _write_key(pair.key, key)
    _write_cert(pair.cert, cert)
    return pair


def load_ca(pair: KeyPair) -> tuple[x509.Certificate, CertificateIssuerPrivateKeyTypes]:
    """The CA's certificate and key; a clear ``PkiError`` when they do not fit together."""
    try:
        cert = x509.load_pem_x509_certificate(pair.cert.read_bytes())
        check_private(pair.key)
        key = serialization.load_pem_private_key(pair.key.read_bytes(), password=None)
    except (OSError, ValueError, TypeError) as e:
        raise PkiError(f"cannot load the CA ({pair.cert}, {pair.key}): {e}") from e
    if not isinstance(key, ec.EllipticCurvePrivateKey | _rsa_type()):
        raise PkiError(f"CA key {pair.key}: unsupported key type {type(key).__name__}")
    pub = cert.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    mine = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    if pub != mine:
        raise PkiError(f"CA key {pair.key} does not belong to the certificate {pair.cert}")
    return cert, key  # type: ignore[return-value]


def _rsa_type() -> type:
    from cryptography.hazmat.primitives.asymmetric import rsa

    return rsa.RSAPrivateKey


def _san(hosts: list[str]) -> x509.SubjectAlternativeName:
    names: list[x509.GeneralName] = []
    for h in hosts:
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(h)))
        except ValueError:
            names.append(x509.DNSName(h))
    return x509.SubjectAlternativeName(names)


def issue_server(
    ca: KeyPair,
    out: KeyPair,
    hosts: list[str] | tuple[str, ...],
    *,
    days: int = SERVER_DAYS,
    key_owner: tuple[int, int] | None = None,
    keep_key: bool = False,
) -> KeyPair:
    """A server certificate for ``hosts`` (DNS names and IP addresses) signed by the CA.
    ``keep_key``: for the key ``out`` already has (its copies, handed to brokers that drop
    root, stay valid), e.g. to add a host name."""
    if not hosts:
        raise PkiError("a server certificate needs at least one host name or address")
    ca_cert, ca_key = load_ca(ca)
    if keep_key:
        loaded = serialization.load_pem_private_key(out.key.read_bytes(), password=None)
        if not isinstance(loaded, ec.EllipticCurvePrivateKey):
            raise PkiError(f"{out.key} is not the EC key ECHO makes")
        key = loaded
    else:
        key = ec.generate_private_key(ec.SECP256R1())
    now = _now()
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hosts[0])]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=days))
        .add_extension(_san(list(dict.fromkeys(hosts))), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    if not keep_key:
        _write_key(out.key, key, owner=key_owner)
    _write_cert(out.cert, cert)
    return out


def issue_client(
    ca: KeyPair,
    out: KeyPair,
    name: str,
    *,
    days: int = SERVER_DAYS,
    key_owner: tuple[int, int] | None = None,
) -> KeyPair:
    """A client certificate (``clientAuth`` only) named ``name``, signed by the CA: what a
    scraper presents to the services' metrics endpoints (mutual TLS)."""
    ca_cert, ca_key = load_ca(ca)
    key = ec.generate_private_key(ec.SECP256R1())
    now = _now()
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    _write_key(out.key, key, owner=key_owner)
    _write_cert(out.cert, cert)
    return out


def server_hosts(cert_path: Path) -> list[str]:
    """The DNS names and addresses a server certificate is valid for."""
    cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return []
    out: list[str] = [str(n) for n in san.get_values_for_type(x509.DNSName)]
    out += [str(a) for a in san.get_values_for_type(x509.IPAddress)]
    return out
