"""echoctl: argument parsing, rendering and error handling, with the HTTP layer faked.

The API is replaced by an ``httpx.MockTransport`` (pure CLI logic); the platform itself is
exercised by ``tests/e2e/test_demo.py``.
"""

from __future__ import annotations

import json
import socket
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from typer.testing import CliRunner

from echo_cli import main, watching
from echo_cli.client import ApiUnreachable, EchoClient, content_type_for
from echo_cli.devstack import Brokers
from echo_cli.devup import env_lines, pick_api_port, port_is_free
from echo_shared.models import DataflowSpec
from echo_shared.operators import config_problems, lookup
from echo_shared.secretfiles import write_secret

REPO = Path(__file__).resolve().parents[2]
DEMO = REPO / "examples" / "demo" / "dataflow.yaml"

Handler = Callable[[httpx.Request], httpx.Response]


def task(tid: str, device: str | None, state: str = "running", **kw: Any) -> dict[str, Any]:
    return {
        "id": tid,
        "operator": kw.get("operator", "core.passthrough"),
        "device": device,
        "state": state,
        "generation": kw.get("generation", 1),
        "reason": "",
        "placement_reason": f"{device}: tier fog",
        "records_in": kw.get("records_in", 0),
        "records_out": kw.get("records_out", 0),
    }


def dataflow(
    df_id: str = "df-1", state: str = "running", tasks: list[dict[str, Any]] | None = None
) -> dict[str, Any]:
    return {
        "id": df_id,
        "name": "demo",
        "desired": "running",
        "state": state,
        "reason": "",
        "created_at": 1.0,
        "updated_at": 2.0,
        "tasks": tasks if tasks is not None else [task("gen", "edge-1"), task("sink", "cloud-1")],
        "edges": [{"from": "gen", "to": "sink", "model": "stream", "transport": "mqtt", "topic": "t/1"}],
    }


DEVICE = {
    "id": "fog-1",
    "tier": "fog",
    "capacity": {"cpu": 2.0, "memory_mb": 2048},
    "labels": {"zone": "a"},
    "input_streams": [],
    "runtimes": ["python"],
    "arch": "x86_64",
    "hostname": "h",
    "agent_version": "0.1.0",
    "reaches_nats": True,
    "status": "online",
    "status_since": 1.0,
    "registered_at": 1.0,
    "last_heartbeat": 1.0,
    "cpu_percent": 12.5,
    "memory_percent": 3.0,
    "tasks": 1,
}


class FakeApi:
    """Records requests and answers them with ``handler``."""

    def __init__(self, handler: Handler) -> None:
        self.handler = handler
        self.requests: list[httpx.Request] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        request.read()
        self.requests.append(request)
        return self.handler(request)


@pytest.fixture
def api(monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[[Handler], FakeApi]]:
    for var in ("ECHO_API_URL", "ECHO_TOKEN", "ECHO_TOKEN_FILE", "ECHO_CA_FILE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setattr(watching, "WATCH_INTERVAL", 0.0)

    def install(handler: Handler) -> FakeApi:
        fake = FakeApi(handler)
        transport = httpx.MockTransport(fake)
        monkeypatch.setattr(
            main,
            "make_client",
            lambda url, token=None, ca_file=None: EchoClient(url, token=token, transport=transport),
        )
        return fake

    yield install


def run(*args: str, input: str | None = None) -> Any:
    return CliRunner().invoke(main.app, list(args), input=input)


# ------------------------------------------------------------------------------ submit


def test_submit_yaml_prints_id_and_state(api: Any, tmp_path: Path) -> None:
    fake = api(lambda r: httpx.Response(201, json={"id": "df-42", "state": "pending"}))
    spec = tmp_path / "flow.yaml"
    spec.write_text("name: x\n")
    result = run("submit", str(spec))
    assert result.exit_code == 0, result.output
    assert "df-42" in result.stdout and "pending" in result.stdout
    (req,) = fake.requests
    assert req.method == "POST" and req.url.path == "/api/v1/dataflows"
    assert req.headers["content-type"] == "application/yaml"
    assert req.content == b"name: x\n"


def test_submit_json_file_and_stdin_content_types(api: Any, tmp_path: Path) -> None:
    fake = api(lambda r: httpx.Response(201, json={"id": "df-1", "state": "pending"}))
    spec = tmp_path / "flow.json"
    spec.write_text('{"name": "x"}')
    assert run("submit", str(spec)).exit_code == 0
    assert run("submit", "-", input="name: y\n").exit_code == 0
    assert [r.headers["content-type"] for r in fake.requests] == ["application/json", "application/yaml"]
    assert fake.requests[1].content == b"name: y\n"
    assert content_type_for("a.YML") == "application/yaml"


def test_submit_422_lists_every_error_and_exits_1(api: Any, tmp_path: Path) -> None:
    body = {
        "detail": "invalid dataflow spec",
        "errors": [
            {"loc": "tasks[1].operator", "msg": "unknown operator 'io.nope'", "type": "unknown_operator"},
            {"loc": "edges[0].to", "msg": "no task 'sinkk'", "type": "value_error"},
        ],
    }
    api(lambda r: httpx.Response(422, json=body))
    spec = tmp_path / "bad.yaml"
    spec.write_text("name: x\n")
    result = run("submit", str(spec))
    assert result.exit_code == 1
    assert "invalid dataflow spec" in result.stderr
    assert "tasks[1].operator: unknown operator 'io.nope'" in result.stderr
    assert "edges[0].to: no task 'sinkk'" in result.stderr
    assert "Traceback" not in result.output


def test_submit_missing_file(api: Any, tmp_path: Path) -> None:
    api(lambda r: httpx.Response(500))
    result = run("submit", str(tmp_path / "nope.yaml"))
    assert result.exit_code == 1
    assert "no such file" in result.stderr and "Traceback" not in result.output


@pytest.mark.parametrize(("final", "code"), [("running", 0), ("completed", 0), ("failed", 1)])
def test_submit_watch_polls_until_settled(api: Any, tmp_path: Path, final: str, code: int) -> None:
    states = iter(["pending", "deploying", final])

    def handler(r: httpx.Request) -> httpx.Response:
        if r.method == "POST":
            return httpx.Response(201, json={"id": "df-1", "state": "pending"})
        st = next(states)
        t = [task("gen", "edge-1", state="running" if st != "pending" else "pending", records_out=7)]
        return httpx.Response(200, json=dataflow(state=st, tasks=t))

    fake = api(handler)
    spec = tmp_path / "flow.yaml"
    spec.write_text("name: x\n")
    result = run("submit", str(spec), "--watch")
    assert result.exit_code == code, result.output
    assert [r.method for r in fake.requests] == ["POST", "GET", "GET", "GET"]
    assert f"dataflow df-1 is {final}" in result.stdout
    assert "edge-1" in result.stdout and "gen" in result.stdout


# ------------------------------------------------------------------------------ get


def test_get_dataflows_json_is_the_api_json_verbatim(api: Any) -> None:
    raw = json.dumps([dataflow()], separators=(",", ":"))
    api(lambda r: httpx.Response(200, text=raw, headers={"content-type": "application/json"}))
    result = run("get", "dataflows", "-o", "json")
    assert result.exit_code == 0
    assert result.stdout == raw + "\n"
    assert json.loads(result.stdout)[0]["tasks"][1]["device"] == "cloud-1"


def test_get_dataflows_table(api: Any) -> None:
    api(lambda r: httpx.Response(200, json=[dataflow("df-a", "running"), dataflow("df-b", "failed")]))
    result = run("get", "dataflows")
    assert result.exit_code == 0
    assert "df-a" in result.stdout and "df-b" in result.stdout and "failed" in result.stdout
    assert "2/2" in result.stdout


def test_get_dataflow_table_shows_tasks_and_edges(api: Any) -> None:
    fake = api(lambda r: httpx.Response(200, json=dataflow("df-7")))
    result = run("get", "dataflow", "df-7")
    assert result.exit_code == 0
    assert fake.requests[0].url.path == "/api/v1/dataflows/df-7"
    for text in ("df-7", "gen", "edge-1", "cloud-1", "fog", "t/1", "mqtt"):
        assert text in result.stdout


def test_get_dataflow_404(api: Any) -> None:
    api(lambda r: httpx.Response(404, json={"detail": "dataflow 'x' not found", "errors": []}))
    result = run("get", "dataflow", "df-x")
    assert result.exit_code == 1
    assert result.stderr.strip() == "error: no dataflow df-x"


def test_get_devices_and_device(api: Any) -> None:
    api(lambda r: httpx.Response(200, json=[DEVICE] if r.url.path.endswith("devices") else DEVICE))
    result = run("get", "devices")
    assert result.exit_code == 0
    assert "fog-1" in result.stdout and "online" in result.stdout and "zone=a" in result.stdout
    result = run("get", "device", "fog-1")
    assert result.exit_code == 0 and "2048" in result.stdout and "x86_64" in result.stdout
    result = run("get", "devices", "-o", "json")
    assert json.loads(result.stdout) == [DEVICE]


def test_get_device_404(api: Any) -> None:
    api(lambda r: httpx.Response(404, json={"detail": "not found", "errors": []}))
    result = run("get", "device", "nope")
    assert result.exit_code == 1 and "no device nope" in result.stderr


def test_api_url_from_env_and_option(api: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    fake = api(lambda r: httpx.Response(200, json=[]))
    monkeypatch.setenv("ECHO_API_URL", "http://env-host:1234")
    assert run("get", "dataflows").exit_code == 0
    assert run("--api-url", "http://opt-host:999/", "get", "devices").exit_code == 0
    assert [str(r.url) for r in fake.requests] == [
        "http://env-host:1234/api/v1/dataflows",
        "http://opt-host:999/api/v1/devices",
    ]


def test_server_error_is_one_line(api: Any) -> None:
    api(lambda r: httpx.Response(503, json={"detail": "scheduler unavailable", "errors": []}))
    result = run("get", "dataflows")
    assert result.exit_code == 1
    assert result.stderr.strip() == "error: scheduler unavailable (HTTP 503)"


# ------------------------------------------------------------------------------ stop


@pytest.mark.parametrize(("status", "state"), [(200, "stopped"), (202, "stopping")])
def test_stop(api: Any, status: int, state: str) -> None:
    fake = api(lambda r: httpx.Response(status, json=dataflow("df-1", state)))
    result = run("stop", "df-1")
    assert result.exit_code == 0
    assert fake.requests[0].method == "DELETE"
    assert f"dataflow df-1 is {state}" in result.stdout
    assert ("still stopping" in result.stdout) is (status == 202)


# ------------------------------------------------------------------------------ connection refused


def test_connection_refused_names_the_url_and_the_fix(monkeypatch: pytest.MonkeyPatch) -> None:
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setenv("ECHO_API_URL", f"http://127.0.0.1:{port}")
    for args in (["get", "dataflows"], ["get", "devices", "-o", "json"], ["stop", "df-1"]):
        result = run(*args)
        assert result.exit_code == 1
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1, result.stderr
        assert f"http://127.0.0.1:{port}" in lines[0]
        assert "echoctl dev up" in lines[0] and "source .echo/dev.env" in lines[0]
        assert "Traceback" not in result.output


def test_several_api_urls_fail_over_to_a_replica_that_answers() -> None:
    """ECHO_API_URL may list every master replica: a request that cannot connect to one goes
    to the next, which is then tried first."""
    seen: list[str] = []

    def replicas(request: httpx.Request) -> httpx.Response:
        seen.append(request.url.host)
        if request.url.host == "down.example":
            raise httpx.ConnectError("connection refused", request=request)
        return httpx.Response(201 if request.method == "POST" else 200, json={"id": "df-1"})

    client = EchoClient(
        "https://down.example:8443, https://up.example:8443/", transport=httpx.MockTransport(replicas)
    )
    assert client.submit(b"{}", "application/json").json()["id"] == "df-1"
    assert seen == ["down.example", "up.example"]
    assert client.base_url == "https://up.example:8443"
    client.list_dataflows()
    assert seen[-1] == "up.example" and len(seen) == 3  # no detour through the dead one

    dead = EchoClient(
        "http://a.example, http://b.example",
        transport=httpx.MockTransport(
            lambda r: (_ for _ in ()).throw(httpx.ConnectError("connection refused", request=r))
        ),
    )
    with pytest.raises(ApiUnreachable) as err:
        dead.list_dataflows()
    assert "http://a.example, http://b.example" in str(err.value)


def test_a_replica_that_times_out_on_connect_fails_over_too() -> None:
    """A replica whose host is down or cut off (packets dropped) never answers the connect: a
    ConnectTimeout (not a ConnectError) means the request never reached it, so even a POST goes
    to the next replica. A timeout once connected is not sent again."""
    seen: list[str] = []

    def replicas(request: httpx.Request) -> httpx.Response:
        seen.append(request.url.host)
        if request.url.host == "partitioned.example":
            raise httpx.ConnectTimeout("timed out", request=request)
        if request.url.host == "slow.example":
            raise httpx.ReadTimeout("timed out", request=request)
        return httpx.Response(201 if request.method == "POST" else 200, json={"id": "df-1"})

    client = EchoClient(
        "https://partitioned.example:8443,https://up.example:8443", transport=httpx.MockTransport(replicas)
    )
    assert client.submit(b"{}", "application/json").json()["id"] == "df-1"
    assert seen == ["partitioned.example", "up.example"]
    assert client.base_url == "https://up.example:8443"

    seen.clear()
    slow = EchoClient("https://slow.example,https://up.example", transport=httpx.MockTransport(replicas))
    with pytest.raises(ApiUnreachable) as err:
        slow.submit(b"{}", "application/json")
    assert seen == ["slow.example"]  # it may have been served: not sent again
    assert "https://slow.example" in str(err.value) and "ReadTimeout" in str(err.value)

    seen.clear()
    cut_off = EchoClient("https://partitioned.example", transport=httpx.MockTransport(replicas))
    with pytest.raises(ApiUnreachable) as err:
        cut_off.list_dataflows()
    assert seen == ["partitioned.example"]
    assert "https://partitioned.example" in str(err.value) and "ConnectTimeout" in str(err.value)


# ------------------------------------------------------------------------------ tokens and audit

TOKEN = {"id": "tok-1a2b", "token": "echo_s3cret", "role": "viewer", "expires": "2030-01-01T00:00:00Z"}
TOKENS: list[dict[str, Any]] = [
    {"id": "bootstrap", "role": "admin", "name": "bootstrap", "created": "2025-01-01T00:00:00Z",
     "expires": None, "revoked": False},
    {"id": "tok-1a2b", "role": "viewer", "name": "ci", "created": "2025-01-02T00:00:00Z",
     "expires": "2030-01-01T00:00:00Z", "revoked": True},
]  # fmt: skip
AUDIT: list[dict[str, Any]] = [
    {"id": "1-0", "time": "2025-01-02T00:00:00.000Z", "token": "tok-1a2b", "role": "operator",
     "action": "DELETE /api/v1/dataflows/{df_id}", "target": {"df_id": "df-9"}, "result": 200,
     "client": "10.0.0.7"},
]  # fmt: skip


def test_token_from_env_or_option_is_sent_as_bearer(api: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    fake = api(lambda r: httpx.Response(200, json=[]))
    assert run("get", "dataflows").exit_code == 0
    monkeypatch.setenv("ECHO_TOKEN", "echo_from_env")
    assert run("get", "dataflows").exit_code == 0
    assert run("--token", "echo_from_option", "get", "devices").exit_code == 0
    auth = [r.headers.get("authorization") for r in fake.requests]
    assert auth == [None, "Bearer echo_from_env", "Bearer echo_from_option"]


def test_token_from_a_private_file(api: Any, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    fake = api(lambda r: httpx.Response(200, json=[]))
    token_file = tmp_path / "admin.token"
    write_secret(token_file, "echo_from_file\n")
    monkeypatch.setenv("ECHO_TOKEN_FILE", str(token_file))
    assert run("get", "dataflows").exit_code == 0
    assert run("--token", "echo_wins", "get", "dataflows").exit_code == 0  # --token / ECHO_TOKEN first
    assert [r.headers["authorization"] for r in fake.requests] == [
        "Bearer echo_from_file",
        "Bearer echo_wins",
    ]
    token_file.chmod(0o644)  # others may read it: refused, in one line
    result = run("get", "dataflows")
    assert result.exit_code == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "cannot read the API token" in lines[0] and "chmod 600" in lines[0], lines


def test_401_and_403_are_one_line(api: Any) -> None:
    api(
        lambda r: httpx.Response(
            401,
            json={"detail": "the token was revoked", "errors": []},
            headers={"WWW-Authenticate": 'Bearer error="invalid_token"'},
        )
    )
    result = run("--token", "echo_x", "get", "dataflows")
    assert result.exit_code == 1
    assert result.stderr.strip().splitlines() == [
        "error: the API refused the token: the token was revoked (set ECHO_TOKEN or --token)"
    ]
    api(lambda r: httpx.Response(403, json={"detail": "this needs the admin role; your token has viewer"}))
    result = run("--token", "echo_x", "tokens", "list")
    assert result.exit_code == 1
    assert result.stderr.strip().splitlines() == [
        "error: not allowed: this needs the admin role; your token has viewer"
    ]


def test_tokens_create_json_prints_exactly_the_api_keys(api: Any) -> None:
    fake = api(lambda r: httpx.Response(201, json=TOKEN))
    result = run("tokens", "create", "--role", "viewer", "--ttl", "24h", "--name", "ci", "-o", "json")
    assert result.exit_code == 0, result.output
    assert set(json.loads(result.stdout)) == {"id", "token", "role", "expires"}
    (req,) = fake.requests
    assert req.method == "POST" and req.url.path == "/api/v1/tokens"
    assert json.loads(req.content) == {"role": "viewer", "ttl": "24h", "name": "ci"}


def test_tokens_create_table_shows_the_secret_once_with_a_warning(api: Any) -> None:
    fake = api(lambda r: httpx.Response(201, json={**TOKEN, "expires": None}))
    result = run("tokens", "create", "--role", "admin")
    assert result.exit_code == 0, result.output
    assert "echo_s3cret" in result.stdout and "not shown again" in result.stdout
    assert "never" in result.stdout
    assert json.loads(fake.requests[0].content) == {"role": "admin"}


def test_tokens_create_refuses_an_unknown_role_before_calling(api: Any) -> None:
    fake = api(lambda r: httpx.Response(201, json=TOKEN))
    result = run("tokens", "create", "--role", "root")
    assert result.exit_code == 2 and not fake.requests


def test_tokens_list_and_revoke(api: Any) -> None:
    def handler(r: httpx.Request) -> httpx.Response:
        if r.method == "DELETE":
            if r.url.path.endswith("/nope"):
                return httpx.Response(404, json={"detail": "token 'nope' not found", "errors": []})
            return httpx.Response(200, json={**TOKENS[1], "revoked": True})
        return httpx.Response(200, json=TOKENS)

    fake = api(handler)
    result = run("tokens", "list")
    assert result.exit_code == 0
    assert "bootstrap" in result.stdout and "revoked" in result.stdout and "never" in result.stdout
    assert json.loads(run("tokens", "list", "-o", "json").stdout) == TOKENS
    result = run("tokens", "revoke", "tok-1a2b")
    assert result.exit_code == 0 and "tok-1a2b" in result.stdout and "revoked" in result.stdout
    assert fake.requests[-1].method == "DELETE" and fake.requests[-1].url.path == "/api/v1/tokens/tok-1a2b"
    result = run("tokens", "revoke", "nope")
    assert result.exit_code == 1 and "no token nope" in result.stderr


def test_get_audit(api: Any) -> None:
    fake = api(lambda r: httpx.Response(200, json=AUDIT))
    result = run("get", "audit", "--limit", "5", "--since", "2025-01-01T00:00:00Z")
    assert result.exit_code == 0, result.output
    assert "DELETE /api/v1/dataflows/{df_id}" in result.stdout and "df_id=df-9" in result.stdout
    req = fake.requests[0]
    assert req.url.path == "/api/v1/audit"
    assert dict(req.url.params) == {"limit": "5", "since": "2025-01-01T00:00:00Z"}
    assert json.loads(run("get", "audit", "-o", "json").stdout) == AUDIT


def test_an_unreadable_ca_file_is_one_line(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("ECHO_API_URL", "https://127.0.0.1:1")
    result = run("--ca-file", str(tmp_path / "missing.pem"), "get", "dataflows")
    assert result.exit_code == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "cannot use the CA file" in lines[0], result.stderr


# ------------------------------------------------------------------------------ dev up helpers


def test_pick_api_port_moves_off_a_busy_port() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        busy = s.getsockname()[1]
        assert not port_is_free("127.0.0.1", busy)
        port, moved = pick_api_port(busy)
        assert moved and port != busy
    assert pick_api_port(port) == (port, False)


def test_env_lines(tmp_path: Path) -> None:
    b = Brokers("nats://h:1", "mqtt://h:2", "redis://h:3/0", tmp_path)
    text = env_lines("http://127.0.0.1:8099", b, "tok")
    pairs = dict(line.split("=", 1) for line in text.splitlines() if "=" in line and not line.startswith("#"))
    assert pairs == {
        "ECHO_API_URL": "http://127.0.0.1:8099",
        "ECHO_TOKEN": "tok",
        "ECHO_NATS_URL": "nats://h:1",
        "ECHO_MQTT_URL": "mqtt://h:2",
        "ECHO_REDIS_URL": "redis://h:3/0",
        "ECHO_NAMESPACE": "echo",
    }


def test_file_sinks_resolve_relative_paths(tmp_path: Path) -> None:
    body = DEMO.read_bytes()
    df = {"tasks": [{"id": "sink", "device": "cloud-1"}]}
    (sink,) = watching.file_sinks(body, df, tmp_path)
    assert sink.task == "sink" and sink.device == "cloud-1"
    assert sink.path == tmp_path / ".echo" / "demo-out.jsonl"


def test_demo_spec_is_valid() -> None:
    spec = DataflowSpec.model_validate(yaml.safe_load(DEMO.read_text()))
    for i, t in enumerate(spec.tasks):
        info = lookup(t.operator)
        assert info is not None, t.operator
        assert config_problems(info, t.config, f"tasks[{i}].config") == []
    assert spec.task("gen").config["count"] == 2000
    assert spec.task("gen").placement.input_stream == "taxi-feed"
