"""An outage is logged twice: when it begins and when it ends (with its length)."""

from __future__ import annotations

import logging

import pytest

from echo_shared.outage import Backoff, Outage


def test_an_outage_is_two_log_lines(caplog: pytest.LogCaptureFixture) -> None:
    now = [100.0]
    outage = Outage("redis", logging.getLogger("t"), clock=lambda: now[0])
    assert outage.ok() is None and not outage.down
    with caplog.at_level(logging.INFO, logger="t"):
        for _ in range(50):
            outage.failed(ConnectionError("refused"))
            now[0] += 0.1
        assert outage.down
        assert outage.ok() == pytest.approx(5.0)
        assert outage.ok() is None
    lines = [r.getMessage() for r in caplog.records]
    assert lines == [
        "redis unavailable (ConnectionError: refused); retrying",
        "redis back after 5.0 s (50 failed attempts)",
    ]


def test_backoff_doubles_to_its_cap() -> None:
    b = Backoff(0.1, 1.0)
    assert [b.next() for _ in range(6)] == [0.1, 0.2, 0.4, 0.8, 1.0, 1.0]
    b.reset()
    assert b.next() == 0.1
