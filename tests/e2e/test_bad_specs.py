"""Bad input gets a 422 that names each problem and where it is; never a 5xx."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from echo_cli.devstack import Brokers
from echo_cli.devstack.platform import Platform
from tests.conftest import FAST_LIVENESS, THREE_TIERS, unique_namespace
from tests.harness.api import Api

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def api(brokers: Brokers, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Api]:
    p = Platform(
        brokers, tmp_path_factory.mktemp("bad-specs"), namespace=unique_namespace(), extra_env=FAST_LIVENESS
    )
    p.start(THREE_TIERS)
    client = Api.of(p)
    try:
        yield client
    finally:
        client.close()
        p.stop()


def gen(tid: str = "gen", **extra: Any) -> dict[str, Any]:
    return {"id": tid, "operator": "io.generate", "config": {"count": 1}, **extra}


def task(tid: str, op: str = "core.passthrough", **extra: Any) -> dict[str, Any]:
    return {"id": tid, "operator": op, **extra}


def spec(tasks: list[dict[str, Any]], edges: list[tuple[str, str]]) -> dict[str, Any]:
    return {"name": "bad", "tasks": tasks, "edges": [{"from": a, "to": b} for a, b in edges]}


CASES = {
    "cycle": (
        spec([gen(), task("a"), task("b")], [("gen", "a"), ("a", "b"), ("b", "a")]),
        "edges[",
        "cycle",
    ),
    "unknown operator": (
        spec([gen(), task("x", "io.teleport")], [("gen", "x")]),
        "tasks[1].operator",
        "unknown operator 'io.teleport'",
    ),
    "edge to a missing task": (
        spec([gen(), task("a")], [("gen", "a"), ("a", "ghost")]),
        "edges[1].to",
        "no task with id 'ghost'",
    ),
    "duplicate id": (
        spec([gen(), task("a"), task("a")], [("gen", "a")]),
        "tasks[2].id",
        "duplicate task id 'a'",
    ),
    "unknown field": (
        spec([gen(colour="blue"), task("a")], [("gen", "a")]),
        "tasks[0].colour",
        "Extra inputs are not permitted",
    ),
    "unknown config field": (
        spec([{"id": "gen", "operator": "io.generate", "config": {"count": 1, "speed": 3}}], []),
        "tasks[0].config.speed",
        "Extra inputs are not permitted",
    ),
    "wrong type in config": (
        spec([{"id": "gen", "operator": "io.generate", "config": {"count": "many"}}], []),
        "tasks[0].config.count",
        "valid integer",
    ),
    "wrong type in spec": (
        {"name": "bad", "tasks": "gen"},
        "tasks",
        "valid list",
    ),
    "wrong type in resources": (
        spec([gen(resources={"cpu": "lots"})], []),
        "tasks[0].resources.cpu",
        "valid number",
    ),
    "missing name": (
        {"tasks": [gen()]},
        "name",
        "Field required",
    ),
    "bad task id": (
        spec([gen("has space")], []),
        "tasks[0].id",
        "should match pattern",
    ),
    "source with an input": (
        spec([gen("g1"), gen("g2")], [("g1", "g2")]),
        "edges[0].to",
        "is a source and takes no input",
    ),
    "unknown tier": (
        spec([gen(placement={"tier": "moon"})], []),
        "tasks[0].placement.tier",
        "",
    ),
    "spool too small": (
        {**spec([gen(), task("a")], []), "edges": [{"from": "gen", "to": "a", "spool": {"max_bytes": 1}}]},
        "edges[0].spool.max_bytes",
        "greater than or equal to 4096",
    ),
    "unknown spool overflow": (
        {**spec([gen(), task("a")], []), "edges": [{"from": "gen", "to": "a", "spool": {"overflow": "x"}}]},
        "edges[0].spool.overflow",
        "'drop_oldest' or 'block'",
    ),
}


@pytest.mark.parametrize("case", list(CASES))
def test_bad_spec_is_422_naming_the_problem(api: Api, case: str) -> None:
    body, loc, msg = CASES[case]
    r = api.http.post("/api/v1/dataflows", json=body)
    assert r.status_code == 422, r.text
    errors = r.json()["errors"]
    assert any(e["loc"].startswith(loc) and msg in e["msg"] for e in errors), errors
    assert "Traceback" not in r.text


@pytest.mark.parametrize(
    ("content", "ctype", "needle"),
    [
        (b"", "application/json", "empty"),
        (b"   \n", "application/yaml", "empty"),
        (b"name: x\ntasks: [\n  - id: a\n", "application/yaml", "invalid YAML at line"),
        (b'{"name": "x", ', "application/json", "invalid JSON at line 1"),
        (b"[1, 2]", "application/json", "expected a dataflow spec"),
        (b"just a string", "application/yaml", "expected a dataflow spec"),
    ],
)
def test_unreadable_bodies_are_422(api: Api, content: bytes, ctype: str, needle: str) -> None:
    r = api.http.post("/api/v1/dataflows", content=content, headers={"content-type": ctype})
    assert r.status_code == 422, r.text
    assert r.json()["errors"][0]["loc"] == "body"
    assert needle in r.json()["errors"][0]["msg"]


def test_every_problem_is_reported_at_once(api: Api) -> None:
    body = spec([gen(), task("x", "nope"), task("x")], [("gen", "ghost")])
    r = api.http.post("/api/v1/dataflows", json=body)
    assert r.status_code == 422
    locs = {e["loc"] for e in r.json()["errors"]}
    assert {"tasks[1].operator", "tasks[2].id", "edges[0].to"} <= locs


def test_unsupported_content_type_is_415(api: Api) -> None:
    r = api.http.post("/api/v1/dataflows", content=b"name: x", headers={"content-type": "text/csv"})
    assert r.status_code == 415
    assert "application/yaml" in r.json()["detail"]


def test_yaml_spec_is_accepted(api: Api) -> None:
    body = b"""
name: from-yaml
tasks:
  - id: gen
    operator: io.generate
    config: {count: 3}
  - id: sink
    operator: io.file_sink
    config: {path: /dev/null}
edges:
  - {from: gen, to: sink}
"""
    r = api.http.post("/api/v1/dataflows", content=body, headers={"content-type": "application/yaml"})
    assert r.status_code == 201, r.text
    assert r.json()["state"] == "pending"
    df = api.wait_state(r.json()["id"], "completed")
    assert df["name"] == "from-yaml"


def test_unplaceable_spec_fails_with_the_reason(api: Api) -> None:
    df_id = api.submit(spec([gen(placement={"input_stream": "camera-7"})], []))
    df = api.wait_state(df_id, "failed")
    assert "input stream camera-7" in df["reason"]


def test_openapi_is_served(api: Api) -> None:
    r = api.http.get("/openapi.json")
    assert r.status_code == 200
    schema = r.json()
    assert "/api/v1/dataflows" in schema["paths"]
    assert "DataflowSpec" in schema["components"]["schemas"]
    assert api.http.get("/docs").status_code == 200
    h = api.http.get("/healthz")
    assert h.status_code == 200 and h.json()["status"] == "ok"


def test_long_poll_waits_for_a_state(api: Api) -> None:
    df_id = api.submit(spec([gen()], []))
    r = api.http.get(f"/api/v1/dataflows/{df_id}", params={"wait": "completed,failed", "timeout": 20})
    assert r.status_code == 200 and r.json()["state"] == "completed", r.text
    r = api.http.get(f"/api/v1/dataflows/{df_id}", params={"wait": "sleeping"})
    assert r.status_code == 422 and r.json()["errors"][0]["loc"] == "query.wait"
    assert api.http.get("/api/v1/dataflows/df-nope", params={"wait": "running"}).status_code == 404


def test_a_body_over_the_limit_gets_413_even_sent_whole(api: Api, brokers: Brokers) -> None:
    """urllib sends the whole body before it reads the answer: it must get the 413, not a
    connection reset."""
    import json
    import urllib.error
    import urllib.request

    from echo_shared.credentials import client_tls

    body = b"x" * (2 << 20)  # the limit is 1 MiB
    req = urllib.request.Request(
        f"{api.base}/api/v1/dataflows",
        data=body,
        method="POST",
        headers={"Content-Type": "application/json", **dict(api.http.headers)},
    )
    ctx = client_tls(brokers.bundle.ca_file) if api.base.startswith("https") and brokers.bundle else None
    with pytest.raises(urllib.error.HTTPError) as e:
        urllib.request.urlopen(req, timeout=30, context=ctx)
    assert e.value.code == 413
    assert "exceeds the limit" in json.loads(e.value.read())["detail"]
