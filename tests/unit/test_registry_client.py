"""Readers of the device list follow the registry's pages to the end."""

from __future__ import annotations

from typing import Any

import pytest

from echo_shared.messages import DeviceListReply, DeviceListRequest
from echo_shared.models import Capacity, DeviceRecord, Tier
from echo_shared.names import Names
from echo_shared.registry_client import list_devices


def record(i: int) -> DeviceRecord:
    return DeviceRecord(id=f"d{i:04d}", tier=Tier.edge, capacity=Capacity(cpu=1, memory_mb=64))


class PagedRegistry:
    def __init__(self, n: int, page: int) -> None:
        self.records = [record(i) for i in range(n)]
        self.page = page
        self.asked: list[str] = []

    async def request(self, subject: str, msg: DeviceListRequest, reply_type: Any, timeout: float) -> Any:
        self.asked.append(msg.after)
        rest = [r for r in self.records if r.id > msg.after]
        page = rest[: self.page]
        return DeviceListReply(devices=page, next_after=page[-1].id if len(rest) > self.page else "")


@pytest.mark.parametrize("n", [0, 1, 5, 6, 1234])
async def test_every_page_is_read_once(n: int) -> None:
    registry = PagedRegistry(n, page=5)
    got = await list_devices(registry, Names("t"))  # type: ignore[arg-type]
    assert [d.id for d in got] == [r.id for r in registry.records]
    assert len(registry.asked) == max(1, -(-n // 5))
