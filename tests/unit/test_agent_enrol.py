"""An agent enrols at the first master replica of ``ECHO_API_URL`` it can connect to: one
refused or timed out on connect (it never got the request) is skipped for the next; an
answer, even an error, is final, and so is a failure once connected (the one-time token may
have been spent). The API is an ``httpx.MockTransport``."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from echo_agent.identity import EnrolmentFailed, credentials_path, enrol, load_or_enrol
from echo_agent.settings import AgentSettings
from echo_shared.credentials import Credentials

ENROLLED = {"mqtt_url": "mqtt://broker.example:1883", "username": "dev-edge-1", "password": "s3cret"}


def settings(tmp_path: Path, api_url: str) -> AgentSettings:
    return AgentSettings(
        device_id="edge-1", tier="edge", state_dir=tmp_path / "state", api_url=api_url, ca_file=None
    )


def api(
    answers: dict[str, Callable[[httpx.Request], httpx.Response]],
) -> tuple[httpx.MockTransport, list[str]]:
    """A transport whose host ``h`` answers with ``answers[h]`` (which may raise)."""
    seen: list[str] = []

    def handle(request: httpx.Request) -> httpx.Response:
        seen.append(request.url.host)
        assert request.url.path == "/api/v1/enrol"
        return answers[request.url.host](request)

    return httpx.MockTransport(handle), seen


def raises(exc: type[httpx.TransportError], text: str = "") -> Callable[[httpx.Request], httpx.Response]:
    def answer(request: httpx.Request) -> httpx.Response:
        raise exc(text, request=request)

    return answer


def test_enrol_fails_over_past_replicas_that_do_not_connect(tmp_path: Path) -> None:
    def enrols(request: httpx.Request) -> httpx.Response:
        assert request.headers["Authorization"] == "Bearer tok"
        assert json.loads(request.content) == {"device": "edge-1", "tier": "edge", "nats": False}
        return httpx.Response(201, json=ENROLLED)

    transport, seen = api(
        {
            "partitioned.example": raises(httpx.ConnectTimeout, "timed out"),  # host down: packets dropped
            "down.example": raises(httpx.ConnectError, "connection refused"),
            "up.example": enrols,
        }
    )
    s = settings(
        tmp_path, " https://partitioned.example:8099/ ,, https://down.example:8099,https://up.example:8099"
    )
    creds = enrol(s, "tok", transport=transport)
    assert seen == ["partitioned.example", "down.example", "up.example"]
    assert creds.username == "dev-edge-1" and creds.mqtt_url == ENROLLED["mqtt_url"]
    assert Credentials.load(credentials_path(tmp_path / "state")).username == "dev-edge-1"


@pytest.mark.parametrize("status", [403, 409, 500])
def test_an_answer_even_an_error_is_final(tmp_path: Path, status: int) -> None:
    transport, seen = api(
        {
            "a.example": lambda r: httpx.Response(status, json={"detail": "token already used"}),
            "b.example": lambda r: httpx.Response(201, json=ENROLLED),
        }
    )
    with pytest.raises(EnrolmentFailed) as err:
        enrol(settings(tmp_path, "http://a.example,http://b.example"), "tok", transport=transport)
    assert seen == ["a.example"]
    assert f"HTTP {status}" in str(err.value) and "token already used" in str(err.value)
    assert not credentials_path(tmp_path / "state").exists()


def test_a_timeout_once_connected_is_final(tmp_path: Path) -> None:
    """The replica may have served the enrolment (and spent the token): not sent again."""
    transport, seen = api(
        {"a.example": raises(httpx.ReadTimeout, "read timed out"), "b.example": lambda r: httpx.Response(201)}
    )
    with pytest.raises(EnrolmentFailed) as err:
        enrol(settings(tmp_path, "http://a.example,http://b.example"), "tok", transport=transport)
    assert seen == ["a.example"]
    assert "http://a.example" in str(err.value) and "read timed out" in str(err.value)


def test_no_replica_connects_names_each_and_why(tmp_path: Path) -> None:
    transport, seen = api(
        {"a.example": raises(httpx.ConnectTimeout), "b.example": raises(httpx.ConnectError, "refused")}
    )
    with pytest.raises(EnrolmentFailed) as err:
        enrol(settings(tmp_path, "http://a.example/,http://b.example"), "tok", transport=transport)
    assert seen == ["a.example", "b.example"]
    message = str(err.value)
    assert "\n" not in message
    assert "http://a.example (ConnectTimeout)" in message and "http://b.example (refused)" in message


@pytest.mark.parametrize("api_url", [None, "", " , "])
def test_enrol_without_an_api_url_says_so(tmp_path: Path, api_url: str | None) -> None:
    s = AgentSettings(device_id="edge-1", tier="edge", state_dir=tmp_path / "state", api_url=api_url)
    with pytest.raises(EnrolmentFailed, match="set ECHO_API_URL"):
        load_or_enrol(s, "tok")
