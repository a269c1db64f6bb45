"""The REST API authenticated and authorised, against a live master (real Redis, NATS, MQTT).

One platform (services, no agents) for the module; every test makes its own tokens.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest

from echo_cli.devstack import Brokers
from echo_cli.devstack.platform import Platform
from tests.conftest import FAST_LIVENESS, unique_namespace
from tests.harness.api import Api

ROLES = ("viewer", "operator", "admin")
RANK = {"viewer": 0, "operator": 1, "admin": 2}
SELF_AUTHENTICATED = {"/api/v1/enrol"}  # public, but the route checks its own (enrolment) token
NOT_IN_SCHEMA = [
    ("get", "/docs"),
    ("get", "/openapi.json"),
    ("get", "/redoc"),
    ("get", "/docs/oauth2-redirect"),
    ("get", "/api/v1/live"),  # the console's live feed (a stream; without topics: 422)
    ("get", "/ui/"),  # the console's pages: public, they send a browser to their login form
    ("get", "/ui/dataflows/{df_id}"),
    ("post", "/ui/login"),
]


@dataclass
class Live:
    platform: Platform
    admin: Api  # the bootstrap admin token

    @property
    def url(self) -> str:
        return self.platform.api_url

    def client(self, token: str | None = None, **headers: str) -> httpx.Client:
        h = dict(headers)
        if token is not None:
            h["Authorization"] = f"Bearer {token}"
        return httpx.Client(base_url=self.url, headers=h, timeout=15, verify=self.platform.api_verify)


@pytest.fixture(scope="module")
def live(brokers: Brokers, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Live]:
    p = Platform(
        brokers, tmp_path_factory.mktemp("auth"), namespace=unique_namespace(), extra_env=dict(FAST_LIVENESS)
    )
    admin = Api.of(p)
    try:
        p.start(fleet=())
        yield Live(p, admin)
    finally:
        admin.close()
        p.stop()


@pytest.fixture(scope="module")
def tokens(live: Live) -> dict[str, str]:
    return {role: live.admin.create_token(role, name=f"test {role}")["token"] for role in ROLES}


def expected_role(method: str, path: str) -> str | None:
    """The contract, written out independently of the implementation (None: public)."""
    if path in ("/healthz", "/api/v1/enrol") or path.startswith("/ui/"):
        return None
    if path.startswith(("/api/v1/tokens", "/api/v1/audit", "/api/v1/enrolments")):
        return "admin"
    if method in ("get", "head") or (method, path) == ("post", "/api/v1/console/codes"):
        return "viewer"
    if path.startswith("/api/v1/devices/"):
        return "admin"
    return "operator"


def concrete(path: str) -> str:
    return re.sub(r"\{[^}]+\}", "nope-does-not-exist", path)


def call(client: httpx.Client, method: str, path: str) -> httpx.Response:
    if method in ("post", "put", "patch"):
        return client.request(method.upper(), concrete(path), json={})
    return client.request(method.upper(), concrete(path))


def test_every_route_answers_by_role(live: Live, tokens: dict[str, str]) -> None:
    schema = live.admin.http.get("/openapi.json").json()
    ops = [
        (m, p)
        for p, item in schema["paths"].items()
        for m in item
        if m in ("get", "post", "delete", "put", "patch")
    ]
    assert len(ops) >= 20, ops
    for required in ("/api/v1/tokens", "/api/v1/audit", "/DAG", "/cat", "/api/v1/enrolments"):
        assert required in schema["paths"], required
    failures: list[str] = []
    callers: dict[str, str | None] = {"none": None, "bad": "echo_not-a-real-token", **tokens}
    clients = {who: live.client(tok) for who, tok in callers.items()}
    try:
        for method, path in ops + NOT_IN_SCHEMA:
            needed = expected_role(method, path)
            for who, client in clients.items():
                r = call(client, method, path)
                got = f"{method.upper()} {path} as {who}: {r.status_code} {r.text[:160]}"
                if r.status_code >= 500 and path != "/healthz":
                    failures.append(f"5xx: {got}")
                elif needed is None:
                    if path not in SELF_AUTHENTICATED and r.status_code in (401, 403):
                        failures.append(f"public route refused: {got}")
                elif who in ("none", "bad"):
                    if r.status_code != 401 or not r.headers.get("www-authenticate", "").startswith("Bearer"):
                        failures.append(f"expected 401 + WWW-Authenticate: {got}")
                elif RANK[who] >= RANK[needed]:
                    if r.status_code in (401, 403):
                        failures.append(f"expected allowed: {got}")
                elif r.status_code != 403 or f"needs the {needed} role" not in r.json()["detail"]:
                    failures.append(f"expected 403 naming {needed}: {got}")
    finally:
        for c in clients.values():
            c.close()
    assert not failures, "\n".join(failures)


def test_unknown_paths_need_a_token_too(live: Live, tokens: dict[str, str]) -> None:
    with live.client() as anon, live.client(tokens["viewer"]) as viewer:
        assert anon.get("/api/v1/nothing-here").status_code == 401
        assert viewer.get("/api/v1/nothing-here").status_code == 404
        r = viewer.post("/api/v1/nothing-here")
        assert r.status_code == 403 and "operator" in r.json()["detail"]


def test_healthz_without_a_token_shows_only_the_status(live: Live) -> None:
    """The status, each dependency's state, the process's random boot id and whether this
    replica leads: no version, address or name of anything."""
    with live.client() as anon:
        r = anon.get("/healthz")
    assert r.status_code == 200
    body = r.json()
    assert set(body) == {"status", "dependencies", "boot_id", "leader"}
    assert body["leader"] is True  # the only master replica leads
    assert body["status"] == "ok"
    assert body["dependencies"] == {"nats": "ok", "mqtt": "ok", "redis": "ok"}
    assert re.fullmatch(r"[0-9a-f]{32}", body["boot_id"])


def test_openapi_declares_the_bearer_scheme(live: Live) -> None:
    schema = live.admin.http.get("/openapi.json").json()
    schemes = schema["components"]["securitySchemes"]
    (name,) = [k for k, v in schemes.items() if v == {**v, "type": "http", "scheme": "bearer"}]
    for path, item in schema["paths"].items():
        for method, op in item.items():
            if method not in ("get", "post", "delete", "put", "patch"):
                continue
            if path in ("/healthz", "/api/v1/enrol"):
                assert op["security"] == [], path
            else:
                assert op["security"] == [{name: []}], f"{method} {path}"


@pytest.mark.parametrize(
    ("header", "error"),
    [
        (None, None),
        ("Bearer", "invalid_request"),
        ("Bearer ,", "invalid_request"),
        ("Basic dXNlcjpwYXNz", "invalid_request"),
        ("Bearer one two", "invalid_request"),
        ("Bearer tok\u00e9n", "invalid_request"),
        ("Bearer echo_unknown-token", "invalid_token"),
        ("bearer echo_unknown-token", "invalid_token"),
    ],
)
def test_bad_credentials_get_401_with_the_challenge(
    live: Live, header: str | None, error: str | None
) -> None:
    headers = {"Authorization": header.encode("utf-8")} if header is not None else {}
    with httpx.Client(base_url=live.url, timeout=10, verify=live.platform.api_verify) as c:
        r = c.get("/api/v1/dataflows", headers=headers)  # type: ignore[arg-type]
    assert r.status_code == 401, r.text
    challenge = r.headers["www-authenticate"]
    assert challenge == (f'Bearer error="{error}"' if error else "Bearer")
    body = r.json()
    assert set(body) == {"detail", "errors"} and body["errors"] == [] and body["detail"]


def test_two_authorization_headers_are_malformed(live: Live, tokens: dict[str, str]) -> None:
    headers = [
        ("Authorization", f"Bearer {tokens['admin']}"),
        ("Authorization", f"Bearer {tokens['viewer']}"),
    ]
    with httpx.Client(base_url=live.url, timeout=10, verify=live.platform.api_verify) as c:
        r = c.get("/api/v1/dataflows", headers=headers)
    assert r.status_code == 401 and 'error="invalid_request"' in r.headers["www-authenticate"], r.text


@pytest.mark.parametrize("param", ["token", "access_token", "api_key", "Access_Token"])
def test_a_token_in_the_url_is_refused_and_not_logged(live: Live, tokens: dict[str, str], param: str) -> None:
    secret = tokens["admin"]
    with live.client(secret) as c:  # even with a good header: the URL has leaked it
        r = c.get("/api/v1/dataflows", params={param: secret})
    assert r.status_code == 400, r.text
    assert r.json()["detail"].startswith("tokens go in the Authorization header, not the URL")
    assert secret not in r.text
    with live.client() as anon:
        r = anon.get("/healthz", params={param: secret})
    assert r.status_code == 400
    logs = "".join(p.read_text(errors="replace") for p in live.platform.logs.glob("*.log"))
    assert secret not in logs


def test_403_names_the_role_needed_and_the_role_held(live: Live, tokens: dict[str, str]) -> None:
    with live.client(tokens["viewer"]) as c:
        r = c.post("/api/v1/dataflows", json={})
    assert r.status_code == 403
    assert r.json() == {"detail": "this needs the operator role; your token has viewer", "errors": []}
    with live.client(tokens["operator"]) as c:
        r = c.get("/api/v1/tokens")
    assert r.status_code == 403
    assert r.json()["detail"] == "this needs the admin role; your token has operator"


def test_operator_submits_and_stops(live: Live, tokens: dict[str, str]) -> None:
    spec: dict[str, Any] = {
        "name": "auth-op",
        "tasks": [{"id": "gen", "operator": "io.generate", "config": {"count": 1}}],
        "edges": [],
    }
    with live.client(tokens["operator"]) as c:
        r = c.post("/api/v1/dataflows", json=spec)
        assert r.status_code == 201, r.text
        df_id = r.json()["id"]
        r = c.delete(f"/api/v1/dataflows/{df_id}")
        assert r.status_code in (200, 202), r.text
