"""The device directory served over NATS: list and get."""

from __future__ import annotations

from echo_shared.messages import DeviceGetReply, DeviceGetRequest, DeviceListReply, DeviceListRequest

from .errors import UnknownDevice
from .store import DeviceStore


class Directory:
    def __init__(self, store: DeviceStore) -> None:
        self.store = store

    async def list(self, req: DeviceListRequest) -> DeviceListReply:
        devices = [rec for rec, _ in await self.store.all()]
        if req.status is not None:
            devices = [d for d in devices if d.status is req.status]
        return DeviceListReply(devices=devices)

    async def get(self, req: DeviceGetRequest) -> DeviceGetReply:
        try:
            return DeviceGetReply(device=await self.store.get(req.device))
        except UnknownDevice:
            return DeviceGetReply(device=None)
