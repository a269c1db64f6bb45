"""An agent declares what one of its cores forwards (``capacity.records_per_s``)."""

from __future__ import annotations

import pytest

from echo_agent import throughput
from echo_agent.heartbeats import device_info
from echo_agent.settings import AgentSettings


def test_the_agent_measures_its_speed_once_and_a_declared_figure_wins(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    throughput.measured.cache_clear()
    measured = throughput.measured()
    assert 1_000 <= measured <= 10_000_000, measured
    assert throughput.measured() == measured, "measured once per process"
    assert device_info(AgentSettings(device_id="e", tier="edge")).capacity.records_per_s == measured
    monkeypatch.setenv("ECHO_RECORDS_PER_S", "1234")
    assert device_info(AgentSettings(device_id="e", tier="edge")).capacity.records_per_s == 1234


def test_a_slower_loop_means_fewer_records(monkeypatch: pytest.MonkeyPatch) -> None:
    throughput.measured.cache_clear()
    fast = throughput.measured()
    real = throughput._loop

    def slow(message: bytes) -> None:
        for _ in range(4):
            real(message)

    monkeypatch.setattr(throughput, "_loop", slow)
    throughput.measured.cache_clear()
    try:
        assert throughput.measured() < fast / 2
    finally:
        throughput.measured.cache_clear()


def test_the_flag_declares_it() -> None:
    from echo_agent.__main__ import parse_args

    s = AgentSettings(**parse_args(["--device-id", "e", "--tier", "fog", "--records-per-s", "25000"]))
    assert device_info(s).capacity.records_per_s == 25000
