"""The audit trail over REST: every mutating call with its token, role, route, target, result."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from echo_cli.devstack import Brokers
from echo_cli.devstack.platform import Platform
from tests.conftest import FAST_LIVENESS, unique_namespace
from tests.harness.api import Api
from tests.harness.waiting import wait_until


@pytest.fixture(scope="module")
def platform(brokers: Brokers, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Platform]:
    p = Platform(
        brokers, tmp_path_factory.mktemp("audit"), namespace=unique_namespace(), extra_env=dict(FAST_LIVENESS)
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


def as_token(platform: Platform, token: str) -> httpx.Client:
    return httpx.Client(
        base_url=platform.api_url,
        headers={"Authorization": f"Bearer {token}"},
        timeout=15,
        verify=platform.api_verify,
    )


def entries_of(admin: Api, token_id: str, **params: Any) -> list[dict[str, Any]]:
    r = admin.http.get("/api/v1/audit", params={"limit": 1000, **params})
    assert r.status_code == 200, r.text
    return [e for e in r.json() if e["token"] == token_id]


SPEC = {"name": "audited", "tasks": [{"id": "gen", "operator": "io.generate", "config": {"count": 1}}]}


def test_mutating_calls_are_recorded_refused_ones_too(platform: Platform, admin: Api) -> None:
    op = admin.create_token("operator", name="audit-op")
    viewer = admin.create_token("viewer", name="audit-viewer")
    with as_token(platform, op["token"]) as c:
        r = c.post("/api/v1/dataflows", json=SPEC)
        assert r.status_code == 201, r.text
        df_id = r.json()["id"]
        assert c.delete(f"/api/v1/dataflows/{df_id}").status_code in (200, 202)
        assert c.post("/api/v1/dataflows/df-nope/rebalance").status_code == 404
        assert c.post("/DAG/stop", params={"uuid": "df-nope"}).status_code == 404
        assert c.get("/api/v1/dataflows").status_code == 200  # a read: not audited
        assert c.post("/api/v1/tokens", json={"role": "admin"}).status_code == 403
    with as_token(platform, viewer["token"]) as c:
        assert c.delete(f"/api/v1/dataflows/{df_id}").status_code == 403

    mine = entries_of(admin, op["id"])
    got = [(e["action"], e["target"], e["result"]) for e in reversed(mine)]  # oldest first
    assert got == [
        ("POST /api/v1/dataflows", {"dataflow": df_id}, 201),
        ("DELETE /api/v1/dataflows/{df_id}", {"df_id": df_id}, got[1][2]),
        ("POST /api/v1/dataflows/{df_id}/rebalance", {"df_id": "df-nope"}, 404),
        ("POST /DAG/stop", {"dataflow": "df-nope"}, 404),
        ("POST /api/v1/tokens", {}, 403),
    ], got
    assert got[1][2] in (200, 202)
    for e in mine:
        assert e["role"] == "operator" and e["client"] == "127.0.0.1"
        assert dt.datetime.fromisoformat(e["time"]).tzinfo is not None
    (refused,) = entries_of(admin, viewer["id"])
    assert (refused["action"], refused["role"], refused["result"]) == (
        "DELETE /api/v1/dataflows/{df_id}", "viewer", 403,
    )  # fmt: skip
    times = [e["time"] for e in admin.http.get("/api/v1/audit").json()]
    assert times == sorted(times, reverse=True)  # newest first


def test_calls_of_revoked_tokens_are_recorded_unknown_ones_not(platform: Platform, admin: Api) -> None:
    tok = admin.create_token("operator")
    admin.http.delete(f"/api/v1/tokens/{tok['id']}").raise_for_status()

    def refused() -> bool:
        with as_token(platform, tok["token"]) as c:
            return c.post("/api/v1/dataflows", json=SPEC).status_code == 401

    wait_until(refused, timeout=3, what="the revoked token refused")
    (entry, *_) = entries_of(admin, tok["id"])
    assert (entry["action"], entry["result"]) == ("POST /api/v1/dataflows", 401)
    with as_token(platform, "echo_unknown") as c:
        assert c.post("/api/v1/dataflows", json=SPEC).status_code == 401
    assert not [
        e for e in admin.http.get("/api/v1/audit").json() if e["token"] is None and e["result"] == 401
    ]


def test_creating_a_token_records_its_id(admin: Api) -> None:
    tok = admin.create_token("viewer")
    entry = next(e for e in entries_of(admin, "bootstrap") if e["action"] == "POST /api/v1/tokens")
    assert entry["target"] == {"token": tok["id"], "role": "viewer"} and entry["role"] == "admin"
    assert tok["token"] not in admin.http.get("/api/v1/audit").text


def test_query_limit_and_since(platform: Platform, admin: Api) -> None:
    admin.create_token("viewer")
    admin.create_token("viewer")
    assert len(admin.http.get("/api/v1/audit", params={"limit": 1}).json()) == 1
    future = (dt.datetime.now(dt.UTC) + dt.timedelta(hours=1)).isoformat()
    assert admin.http.get("/api/v1/audit", params={"since": future}).json() == []
    past = (dt.datetime.now(dt.UTC) - dt.timedelta(hours=1)).isoformat()
    assert len(admin.http.get("/api/v1/audit", params={"since": past}).json()) >= 2
    for params, loc in (({"since": "yesterday"}, "query.since"), ({"limit": 0}, "query.limit")):
        r = admin.http.get("/api/v1/audit", params=params)
        assert r.status_code == 422 and r.json()["errors"][0]["loc"] == loc, r.text
    op = admin.create_token("operator")
    with as_token(platform, op["token"]) as c:
        r = c.get("/api/v1/audit")
    assert r.status_code == 403 and "admin" in r.json()["detail"]
