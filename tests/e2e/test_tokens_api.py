"""API tokens over REST and through the real ``echoctl``, against a live master."""

from __future__ import annotations

import datetime as dt
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from echo_cli.devstack import Brokers
from echo_cli.devstack.platform import Platform
from echo_shared.secretfiles import new_secret, write_secret
from tests.conftest import FAST_LIVENESS, PlatformFactory, unique_namespace
from tests.harness.api import Api
from tests.harness.waiting import wait_until

ECHOCTL = Path(sys.executable).parent / "echoctl"


@pytest.fixture(scope="module")
def platform(brokers: Brokers, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Platform]:
    p = Platform(
        brokers,
        tmp_path_factory.mktemp("tokens"),
        namespace=unique_namespace(),
        extra_env=dict(FAST_LIVENESS),
    )
    try:
        p.start(fleet=())
        yield p
    finally:
        p.stop()


@pytest.fixture
def admin(platform: Platform) -> Iterator[Api]:
    api = Api.of(platform)
    yield api
    api.close()


def status_with(platform: Platform, token: str, path: str = "/api/v1/dataflows") -> int:
    r = httpx.get(
        platform.api_url + path,
        headers={"Authorization": f"Bearer {token}"},
        timeout=10,
        verify=platform.api_verify,
    )
    return r.status_code


def test_create_list_revoke(platform: Platform, admin: Api) -> None:
    r = admin.http.post("/api/v1/tokens", json={"role": "operator", "ttl": "24h", "name": "ci"})
    assert r.status_code == 201, r.text
    created = r.json()
    assert set(created) == {"id", "token", "role", "expires"}
    assert created["role"] == "operator" and created["token"].startswith("echo_")
    expires = dt.datetime.fromisoformat(created["expires"])
    assert expires.tzinfo is not None
    assert abs((expires - dt.datetime.now(dt.UTC)).total_seconds() - 86400) < 60
    assert status_with(platform, created["token"]) == 200

    listed = {t["id"]: t for t in admin.http.get("/api/v1/tokens").json()}
    mine = listed[created["id"]]
    assert set(mine) == {"id", "role", "name", "created", "expires", "revoked"}
    assert (mine["role"], mine["name"], mine["expires"], mine["revoked"]) == (
        "operator", "ci", created["expires"], False,
    )  # fmt: skip
    assert created["token"] not in json.dumps(listed)
    boot = listed["bootstrap"]
    assert (boot["role"], boot["expires"], boot["revoked"]) == ("admin", None, False)

    r = admin.http.delete(f"/api/v1/tokens/{created['id']}")
    assert r.status_code == 200 and r.json()["revoked"] is True
    t0 = time.monotonic()
    wait_until(lambda: status_with(platform, created["token"]) == 401, timeout=3, what="revoked -> 401")
    assert time.monotonic() - t0 <= 1.2
    r = httpx.get(
        platform.api_url + "/api/v1/dataflows",
        headers={"Authorization": f"Bearer {created['token']}"},
        verify=platform.api_verify,
    )
    assert r.headers["www-authenticate"] == 'Bearer error="invalid_token"' and "revoked" in r.json()["detail"]
    assert admin.http.delete("/api/v1/tokens/tok-nope").status_code == 404


def test_a_short_lived_token_expires(platform: Platform, admin: Api) -> None:
    created = admin.create_token("viewer", ttl=1.5)
    assert status_with(platform, created["token"]) == 200
    t0 = time.monotonic()
    wait_until(lambda: status_with(platform, created["token"]) == 401, timeout=6, what="expired -> 401")
    assert time.monotonic() - t0 > 0.3  # it did work for a while
    r = httpx.get(
        platform.api_url + "/api/v1/dataflows",
        headers={"Authorization": f"Bearer {created['token']}"},
        verify=platform.api_verify,
    )
    assert "expired" in r.json()["detail"]


@pytest.mark.parametrize(
    ("body", "loc"),
    [
        ({"role": "root"}, "body.role"),
        ({}, "body.role"),
        ({"role": "viewer", "ttl": "abc"}, "body.ttl"),
        ({"role": "viewer", "ttl": -5}, "body.ttl"),
        ({"role": "viewer", "ttl": "0s"}, "body.ttl"),
        ({"role": "viewer", "ttl": True}, "body.ttl"),
        ({"role": "viewer", "ttl": [1]}, "body.ttl"),
        ({"role": "viewer", "name": "x" * 101}, "body.name"),
        ({"role": "viewer", "colour": "red"}, "body.colour"),
    ],
)
def test_bad_token_requests_are_422_naming_the_field(admin: Api, body: dict[str, object], loc: str) -> None:
    r = admin.http.post("/api/v1/tokens", json=body)
    assert r.status_code == 422, r.text
    assert loc in [e["loc"] for e in r.json()["errors"]], r.json()


def test_a_malformed_json_body_is_4xx(admin: Api) -> None:
    r = admin.http.post("/api/v1/tokens", content=b"{nope", headers={"Content-Type": "application/json"})
    assert 400 <= r.status_code < 500


def echoctl(platform: Platform, *args: str, token: str | None = None) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("ECHO_TOKEN", "ECHO_CA_FILE")}
    env["ECHO_API_URL"] = platform.api_url
    if platform.brokers.bundle is not None:  # the API serves HTTPS with the bundle's certificate
        env["ECHO_CA_FILE"] = str(platform.brokers.bundle.ca_file)
    if token is not None:
        env["ECHO_TOKEN"] = token
    return subprocess.run([str(ECHOCTL), *args], env=env, capture_output=True, text=True, timeout=60)


def test_the_real_cli_manages_tokens(platform: Platform) -> None:
    out = echoctl(platform, "tokens", "create", "--role", "viewer", "--ttl", "1h", "-o", "json",
                  token=platform.admin_token)  # fmt: skip
    assert out.returncode == 0, out.stderr
    created = json.loads(out.stdout)
    assert set(created) == {"id", "token", "role", "expires"} and created["role"] == "viewer"
    assert status_with(platform, created["token"]) == 200

    denied = echoctl(platform, "tokens", "list", token=created["token"])
    assert denied.returncode == 1
    lines = denied.stderr.strip().splitlines()
    assert len(lines) == 1 and "needs the admin role" in lines[0], denied.stderr
    anonymous = echoctl(platform, "get", "dataflows")
    assert anonymous.returncode == 1 and "the API refused the token" in anonymous.stderr

    listed = echoctl(platform, "tokens", "list", "-o", "json", token=platform.admin_token)
    assert created["id"] in {t["id"] for t in json.loads(listed.stdout)}
    table = echoctl(platform, "tokens", "create", "--role", "operator", token=platform.admin_token)
    assert table.returncode == 0 and "not shown again" in table.stdout

    revoked = echoctl(platform, "tokens", "revoke", created["id"], token=platform.admin_token)
    assert revoked.returncode == 0 and "revoked" in revoked.stdout, revoked.stderr
    wait_until(lambda: status_with(platform, created["token"]) == 401, timeout=3, what="revoked -> 401")

    audit = echoctl(platform, "get", "audit", "--limit", "50", "-o", "json", token=platform.admin_token)
    assert audit.returncode == 0, audit.stderr
    actions = [(e["action"], e["target"]) for e in json.loads(audit.stdout)]
    assert ("DELETE /api/v1/tokens/{token_id}", {"token_id": created["id"]}) in actions


def test_bootstrap_token_follows_its_file_across_a_restart(platform_factory: PlatformFactory) -> None:
    platform, _ = platform_factory(fleet=())
    old = platform.admin_token
    assert status_with(platform, old, "/api/v1/tokens") == 200
    new = "echo_" + new_secret()
    write_secret(platform.admin_token_file, new)
    platform.services["master"].stop()
    platform.start_service("master")
    platform.wait_api()
    wait_until(lambda: status_with(platform, new, "/api/v1/tokens") == 200, timeout=20, what="new bootstrap")
    assert status_with(platform, old) == 401
    listed = httpx.get(
        platform.api_url + "/api/v1/tokens",
        headers={"Authorization": f"Bearer {new}"},
        timeout=10,
        verify=platform.api_verify,
    ).json()
    assert [t["id"] for t in listed] == ["bootstrap"]
