"""The REST API over HTTPS (``ECHO_API_TLS``): a certificate made here, signed by a test CA."""

from __future__ import annotations

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

from echo_cli.devstack import Brokers
from echo_cli.devstack.platform import Platform
from echo_shared import pki as pki_lib
from echo_shared.credentials import client_tls
from tests.conftest import FAST_LIVENESS, unique_namespace

ECHOCTL = Path(sys.executable).parent / "echoctl"


@dataclass
class Pki:
    ca: Path
    cert: Path
    key: Path


def make_pki(d: Path) -> Pki:
    """A CA of its own (not the platform's bundle) and the API's certificate for 127.0.0.1."""
    ca = pki_lib.create_ca(d, name="echo test CA")
    api = pki_lib.issue_server(ca, pki_lib.KeyPair(d / "api.pem", d / "api.key"), ["127.0.0.1", "localhost"])
    return Pki(ca.cert, api.cert, api.key)


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
        p.wait_api(verify=client_tls(pki.ca))
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
        assert r.json()["status"] == "ok"
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
