"""The dev stack binds its ports without a race: a port chosen free and taken by another
process before the server bound it (two stacks starting at once) ends with the server on
another port, never with the stack trusting whatever listens there."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from echo_cli.devstack import brokers as brokers_module
from echo_cli.devstack import platform as platform_module
from echo_cli.devstack import processes
from echo_cli.devstack.brokers import start_brokers
from echo_cli.devstack.platform import Platform
from tests.conftest import unique_namespace


@pytest.fixture
def squatter() -> Iterator[socket.socket]:
    """A listener of another process's, on a port that looked free a moment before."""
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("127.0.0.1", 0))
    s.listen()
    yield s
    s.close()


def taken_first(monkeypatch: pytest.MonkeyPatch, port: int, module: object) -> list[int]:
    """``free_port`` answers ``port`` (already taken) the first time, then real free ports."""
    real = processes.free_port
    given: list[int] = []

    def fake(host: str = "127.0.0.1") -> int:
        given.append(port if not given else real(host))
        return given[-1]

    monkeypatch.setattr(processes, "free_port", fake)
    monkeypatch.setattr(module, "free_port", fake, raising=False)
    return given


def test_a_broker_whose_port_was_taken_moves_to_another(
    squatter: socket.socket, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    port = squatter.getsockname()[1]
    given = taken_first(monkeypatch, port, brokers_module)
    b = start_brokers(tmp_path / "brokers", tester=True)
    try:
        assert given[0] == port and len(given) == 4, given  # nats moved; mosquitto and redis as chosen
        assert f":{port}" not in b.nats_url
        for name, p in b.processes.items():
            assert p.alive(), name
        # the stack works on the ports it reports
        access = b.access()
        r = redis.Redis.from_url(b.redis_url, **access.redis_options())
        assert r.ping()
        r.close()
    finally:
        b.stop()


def test_the_api_port_is_chosen_again_when_taken(
    squatter: socket.socket, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    b = start_brokers(tmp_path / "brokers", tester=True)
    try:
        port = squatter.getsockname()[1]
        platform = Platform(b, tmp_path / "platform", namespace=unique_namespace())
        platform.api_port = port  # chosen free here, then taken by someone else
        monkeypatch.setattr(platform_module, "free_port", processes.free_port)
        try:
            platform.start(())
            assert platform.api_port != port
            assert processes.listens(platform.services["master"].pid, platform.api_port)
        finally:
            platform.stop()
        fixed = Platform(
            b, tmp_path / "fixed", namespace=unique_namespace(), api_port=port, api_port_fixed=True
        )
        try:
            with pytest.raises(processes.PortTaken):
                fixed.start(())
        finally:
            fixed.stop()
    finally:
        b.stop()
