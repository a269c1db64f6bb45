"""Liveness judgement: online, then unreachable, then lost."""

from __future__ import annotations

import pytest

from echo_registry.liveness import judge
from echo_shared.models import DeviceStatus


@pytest.mark.parametrize(
    ("silence", "expected"),
    [
        (0.0, "online"),
        (2.9, "online"),
        (3.0, "unreachable"),
        (14.9, "unreachable"),
        (15.0, "lost"),
        (1e6, "lost"),
    ],
)
def test_judge(silence: float, expected: str) -> None:
    assert judge(silence, unreachable_after=3.0, lost_after=15.0) is DeviceStatus(expected)
