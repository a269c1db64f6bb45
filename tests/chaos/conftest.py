"""Chaos tests: real brokers and services, killed with -9 and started again.

Each test gets brokers of its own, with persistence on as in production (JetStream's file
store, Redis' append-only file, Mosquitto's persistence owned by the account it runs as),
because it kills and restarts them. ``make test`` runs the fast cases; ``make chaos`` all
(``-m chaos``; the slow ones are marked ``slow``).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from echo_cli.devstack import Brokers
from echo_cli.devstack.brokers import start_brokers
from echo_cli.devstack.platform import AgentSpec, Platform
from tests.conftest import FAST_LIVENESS, unique_namespace
from tests.harness.api import Api

FLEET = (
    AgentSpec("edge-1", "edge", cpu=1.0, memory_mb=1024),
    AgentSpec("fog-1", "fog", cpu=2.0, memory_mb=2048),
    AgentSpec("fog-2", "fog", cpu=2.0, memory_mb=2048),
    AgentSpec("cloud-1", "cloud", cpu=4.0, memory_mb=4096),
)


@dataclass
class Stack:
    brokers: Brokers
    platform: Platform
    api: Api


@pytest.fixture
def stack(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Stack]:
    yield from running_stack(tmp_path, request)


def running_stack(
    tmp_path: Path,
    request: pytest.FixtureRequest,
    *,
    nats_nodes: int = 1,
    redis_ha: bool = False,
    env: dict[str, str] | None = None,
) -> Iterator[Stack]:
    """Brokers (persistent; NATS with ``nats_nodes`` nodes; Redis with Sentinel when
    ``redis_ha``), services and the fleet; stopped (and on failure, their logs printed) at
    the end."""
    brokers = start_brokers(
        tmp_path / "brokers", tester=True, persistent=True, nats_nodes=nats_nodes, redis_ha=redis_ha
    )
    platform = Platform(
        brokers,
        tmp_path / "platform",
        namespace=unique_namespace(),
        extra_env={**FAST_LIVENESS, **(env or {})},
    )
    api: Api | None = None
    try:
        platform.start(FLEET)
        api = Api.of(platform)
        yield Stack(brokers, platform, api)
    finally:
        if api is not None:
            api.close()
        platform.stop()
        brokers.stop()
        failed = getattr(request.node, "rep_call", None) is not None and request.node.rep_call.failed
        if failed:
            for log in sorted([*platform.logs.glob("*.log"), *(tmp_path / "brokers" / "logs").glob("*.log")]):
                print(f"----- {log.name} -----\n{log.read_text(errors='replace')[-5000:]}")
