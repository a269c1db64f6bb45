"""The device directory served over NATS: list, get, and revoke (asked by the master)."""

from __future__ import annotations

import time

from echo_shared.messages import (
    DeviceGetReply,
    DeviceGetRequest,
    DeviceListReply,
    DeviceListRequest,
    DeviceRevokeReply,
    DeviceRevokeRequest,
)
from echo_shared.models import DeviceStatus

from .errors import UnknownDevice
from .events import DeviceEvents
from .store import DeviceStore


class Directory:
    def __init__(self, store: DeviceStore, events: DeviceEvents | None = None) -> None:
        self.store = store
        self.events = events

    async def revoke(self, req: DeviceRevokeRequest) -> DeviceRevokeReply:
        """The device's identity is gone: it is ``revoked`` for good and its tasks fail over."""
        prev = await self.store.revoke(req.device, time.time())
        if prev is not None and self.events is not None:
            await self.events.changed(req.device, DeviceStatus.revoked, prev, req.reason)
        try:
            return DeviceRevokeReply(device=await self.store.get(req.device))
        except UnknownDevice:
            return DeviceRevokeReply(device=None)

    async def list(self, req: DeviceListRequest) -> DeviceListReply:
        rows, next_after = await self.store.page(req.after, req.limit)
        devices = [rec for rec, _ in rows]
        if req.status is not None:
            devices = [d for d in devices if d.status is req.status]
        return DeviceListReply(devices=devices, next_after=next_after)

    async def get(self, req: DeviceGetRequest) -> DeviceGetReply:
        try:
            return DeviceGetReply(device=await self.store.get(req.device))
        except UnknownDevice:
            return DeviceGetReply(device=None)
