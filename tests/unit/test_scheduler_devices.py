"""The scheduler's device list (``echo_scheduler.devices``): asked of the registry again after
``MAX_AGE``, or at once after a device event; never kept when an event came while asking."""

from __future__ import annotations

import asyncio

from echo_scheduler.devices import DeviceView
from echo_shared.models import Capacity, DeviceRecord, Tier


def device(i: str) -> DeviceRecord:
    return DeviceRecord(id=i, tier=Tier.edge, capacity=Capacity(cpu=1, memory_mb=512))


class Registry:
    def __init__(self) -> None:
        self.devices = [device("a")]
        self.asked = 0
        self.during: list[object] = []  # called while a request is in flight

    async def fetch(self, timeout: float | None = None) -> list[DeviceRecord]:
        self.asked += 1
        for f in self.during:
            f()  # type: ignore[operator]
        await asyncio.sleep(0)
        return list(self.devices)


async def test_the_list_is_used_again_until_it_is_old() -> None:
    reg = Registry()
    view = DeviceView(reg.fetch, max_age=60)
    assert [d.id for d in await view.devices()] == ["a"]
    reg.devices.append(device("b"))
    assert [d.id for d in await view.devices()] == ["a"] and reg.asked == 1
    view.max_age = 0.0  # now older than allowed
    assert [d.id for d in await view.devices()] == ["a", "b"] and reg.asked == 2


async def test_a_device_event_drops_the_list() -> None:
    reg = Registry()
    view = DeviceView(reg.fetch, max_age=60)
    await view.devices()
    reg.devices = [device("c")]
    view.changed()
    assert [d.id for d in await view.devices()] == ["c"] and reg.asked == 2


async def test_a_list_asked_for_while_an_event_came_is_not_kept() -> None:
    reg = Registry()
    view = DeviceView(reg.fetch, max_age=60)
    reg.during.append(view.changed)
    await view.devices()  # answered, but possibly from before the change
    reg.during.clear()
    await view.devices()
    assert reg.asked == 2
    await view.devices()
    assert reg.asked == 2
