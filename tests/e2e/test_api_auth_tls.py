"""The REST API over HTTPS (``ECHO_API_TLS``): a certificate made here, signed by a test CA."""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
import ssl
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from echo_cli.devstack import Brokers
from echo_cli.devstack.platform import Platform
from echo_shared.secretfiles import write_secret
from tests.conftest import FAST_LIVENESS, unique_namespace

ECHOCTL = Path(sys.executable).parent / "echoctl"


@dataclass
class Pki:
    ca: Path
    cert: Path
    key: Path


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def make_pki(d: Path) -> Pki:
    now = dt.datetime.now(dt.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = (
        x509.CertificateBuilder()
        .subject_name(_name("echo test CA"))
        .issuer_name(_name("echo test CA"))
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
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
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name("127.0.0.1"))
        .issuer_name(ca.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.DNSName("localhost")]
            ),
            critical=False,
        )
        .add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )
    pki = Pki(d / "ca.pem", d / "api.pem", d / "api.key")
    pki.ca.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    pki.cert.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    write_secret(
        pki.key,
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        ),
    )
    return pki


@pytest.fixture(scope="module")
def tls_master(brokers: Brokers, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Platform, Pki]]:
    """Only the master (no agents, no other service): enough to serve the API over HTTPS."""
    work = tmp_path_factory.mktemp("tls")
    pki = make_pki(work)
    env = {
        **FAST_LIVENESS,
        "ECHO_API_TLS": "true",
        "ECHO_API_CERT_FILE": str(pki.cert),
        "ECHO_API_KEY_FILE": str(pki.key),
    }
    p = Platform(brokers, work / "platform", namespace=unique_namespace(), extra_env=env)
    try:
        p.start_service("master")
        p.wait_api()
        yield p, pki
    finally:
        p.stop()


def https(p: Platform) -> str:
    return p.api_url.replace("http://", "https://")


def test_the_api_is_served_over_https(tls_master: tuple[Platform, Pki]) -> None:
    p, pki = tls_master
    verify = ssl.create_default_context(cafile=str(pki.ca))
    headers = {"Authorization": f"Bearer {p.admin_token}"}
    with httpx.Client(base_url=https(p), verify=verify, timeout=10) as c:
        deadline = time.monotonic() + 20
        while (r := c.get("/healthz")).status_code != 200 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert r.json() == {"status": "ok"}
        assert c.get("/api/v1/dataflows").status_code == 401
        assert c.get("/api/v1/dataflows", headers=headers).status_code == 200
    with httpx.Client(base_url=https(p), timeout=10) as c, pytest.raises(httpx.ConnectError):
        c.get("/healthz")  # the system's CAs do not know ours
    with httpx.Client(base_url=p.api_url, timeout=10) as c, pytest.raises(httpx.HTTPError):
        c.get("/healthz")  # plain HTTP is not served


def test_echoctl_verifies_the_api_with_the_ca_file(tls_master: tuple[Platform, Pki]) -> None:
    p, pki = tls_master
    env = {k: v for k, v in os.environ.items() if k not in ("ECHO_CA_FILE", "ECHO_TOKEN")}
    env |= {"ECHO_API_URL": https(p), "ECHO_TOKEN": p.admin_token}
    ok = subprocess.run(
        [str(ECHOCTL), "--ca-file", str(pki.ca), "get", "dataflows", "-o", "json"],
        env=env, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert ok.returncode == 0 and ok.stdout.strip() == "[]", ok.stderr
    untrusted = subprocess.run(
        [str(ECHOCTL), "get", "dataflows"], env=env, capture_output=True, text=True, timeout=60
    )
    assert untrusted.returncode == 1
    lines = untrusted.stderr.strip().splitlines()
    assert len(lines) == 1 and "ECHO_CA_FILE" in lines[0] and "Traceback" not in untrusted.stderr


def test_tls_without_its_files_is_a_one_line_start_error(brokers: Brokers, tmp_path: Path) -> None:
    env = {"ECHO_API_TLS": "true", "ECHO_API_CERT_FILE": str(tmp_path / "missing.pem")}
    p = Platform(brokers, tmp_path / "platform", namespace=unique_namespace(), extra_env=env)
    try:
        master = p.start_service("master")
        deadline = time.monotonic() + 30
        while master.alive() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not master.alive() and master.returncode == 1
        log = master.log_tail()
        assert "ECHO_API_CERT_FILE" in log and "Traceback" not in log, log
    finally:
        p.stop()
