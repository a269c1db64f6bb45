"""Fixtures shared by every test: real brokers (session), platforms (one namespace each)."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from echo_cli.devstack import Brokers, start_brokers
from echo_cli.devstack.platform import AgentSpec, Platform
from echo_cli.testbed.network import TESTBED_HOST
from tests.harness.api import Api

# fast liveness for tests: heartbeats every 0.2 s, unreachable after 1 s, lost after 3 s
FAST_LIVENESS = {
    "ECHO_HEARTBEAT_INTERVAL": "0.2",
    "ECHO_UNREACHABLE_AFTER": "1.0",
    "ECHO_LOST_AFTER": "3.0",
    "ECHO_LIVENESS_PERIOD": "0.1",
    "ECHO_COMMAND_TIMEOUT": "1.0",
    "ECHO_RECONCILE_PERIOD": "0.25",
    "ECHO_REBALANCE_ENABLED": "false",  # tests that want the adaptive rebalancer turn it on
}

THREE_TIERS = (
    AgentSpec("edge-1", "edge", input_streams=("taxi-feed",), cpu=1.0, memory_mb=512),
    AgentSpec("fog-1", "fog", cpu=2.0, memory_mb=2048),
    AgentSpec("cloud-1", "cloud", cpu=4.0, memory_mb=8192),
)


@pytest.fixture(scope="session")
def brokers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Brokers]:
    # the testbed's namespaces dial the brokers by TESTBED_HOST: the certificate names it too
    b = start_brokers(tmp_path_factory.mktemp("brokers"), tester=True, hosts=(TESTBED_HOST,))
    try:
        yield b
    finally:
        b.stop()


def unique_namespace() -> str:
    return "t" + uuid.uuid4().hex[:10]


PlatformFactory = Callable[..., tuple[Platform, Api]]


@pytest.fixture
def platform_factory(
    brokers: Brokers, tmp_path: Path, request: pytest.FixtureRequest
) -> Iterator[PlatformFactory]:
    """Start a platform (services + fleet) in its own namespace; stopped at teardown."""
    started: list[tuple[Platform, Api]] = []

    def start(
        fleet: tuple[AgentSpec, ...] = THREE_TIERS, env: dict[str, str] | None = None
    ) -> tuple[Platform, Api]:
        p = Platform(
            brokers,
            tmp_path / f"platform{len(started)}",
            namespace=unique_namespace(),
            extra_env={**FAST_LIVENESS, **(env or {})},
        )
        started.append((p, Api.of(p)))
        p.start(fleet)
        return started[-1]

    yield start
    failed = getattr(request.node, "rep_call", None) is not None and request.node.rep_call.failed
    for p, api in started:
        api.close()
        p.stop()
        if failed:
            for log in sorted(p.logs.glob("*.log")):
                print(f"----- {log.name} -----\n{log.read_text(errors='replace')[-6000:]}")


@pytest.fixture
def platform(platform_factory: PlatformFactory) -> tuple[Platform, Api]:
    return platform_factory()


@pytest.hookimpl(tryfirst=True, hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    outcome = yield
    rep = outcome.get_result()  # type: ignore[attr-defined]
    setattr(item, f"rep_{rep.when}", rep)


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--run-slow", action="store_true", help="also run the chaos suite's slow cases (make chaos)"
    )


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """``make test`` runs the chaos suite's fast part; its slow cases run under ``make chaos``
    (deselected here, not skipped: they are not missing, they run elsewhere)."""
    if config.getoption("--run-slow"):
        return
    slow = [i for i in items if i.get_closest_marker("slow") is not None]
    if slow:
        config.hook.pytest_deselected(items=slow)
        items[:] = [i for i in items if i.get_closest_marker("slow") is None]
