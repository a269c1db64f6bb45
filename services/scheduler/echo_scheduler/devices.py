"""The registry's device list, as the scheduler reads it: kept for a moment, dropped on change.

Both of a dataflow's requests to the scheduler (the API's validation, then the master's
placement, a few milliseconds apart) need every device record, and each asked the
registry for them: a round trip on every deployment's path. The list is now kept for at most ``MAX_AGE``
and dropped as soon as the registry's announcement of a device's change of status
(``{ns}.events.device.>``: one came, went, came back, was revoked) reaches the scheduler. A
request racing that announcement (a failover asked for by a service that heard it first;
one sent while the scheduler's connection was down) may still see the device as it was,
for at most ``MAX_AGE``: a failover names the device it leaves (``avoid``), and a deploy to
a device that is gone times out and is placed again. What changes without an announcement
(load figures from heartbeats, a device's own description when it says hello again) is at
most ``MAX_AGE`` old too.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable

from echo_shared.models import DeviceRecord

MAX_AGE = 1.0  # seconds a device list is used again


class DeviceView:
    def __init__(
        self, fetch: Callable[[float | None], Awaitable[list[DeviceRecord]]], max_age: float = MAX_AGE
    ) -> None:
        self._fetch = fetch
        self.max_age = max_age
        self._devices: list[DeviceRecord] | None = None
        self._at = 0.0
        self._changes = 0  # device events seen: a list fetched before the latest one is stale

    async def devices(self, timeout: float | None = None) -> list[DeviceRecord]:
        if self._devices is not None and time.monotonic() - self._at < self.max_age:
            return self._devices
        changes, asked = self._changes, time.monotonic()
        devices = await self._fetch(timeout)
        if changes == self._changes:  # no announcement while it was asked for
            self._devices, self._at = devices, asked
        return devices

    def changed(self) -> None:
        """A device's status changed (a registry event): the next request asks again."""
        self._changes += 1
        self._devices = None
