"""The scheduler's NATS handlers: validate and place (the I/O around the pure core)."""

from __future__ import annotations

import logging

from opentelemetry import trace

from echo_shared.errors import BusError, PlacementError
from echo_shared.messages import (
    DeviceListReply,
    DeviceListRequest,
    PlaceReply,
    PlaceRequest,
    ValidateReply,
    ValidateRequest,
)
from echo_shared.models import DeviceRecord
from echo_shared.names import Names
from echo_shared.nats_bus import NatsBus

from . import placing, validating
from .errors import RegistryUnavailable

log = logging.getLogger(__name__)


class SchedulerService:
    def __init__(self, bus: NatsBus, names: Names, registry_timeout: float) -> None:
        self.bus = bus
        self.names = names
        self.registry_timeout = registry_timeout

    async def validate(self, req: ValidateRequest) -> ValidateReply:
        found = validating.problems(req.spec)
        return ValidateReply(ok=not found, problems=[p.as_dict() for p in found])

    async def devices(self) -> list[DeviceRecord]:
        try:
            reply = await self.bus.request(
                self.names.registry_list, DeviceListRequest(), DeviceListReply, timeout=self.registry_timeout
            )
        except BusError as e:
            raise RegistryUnavailable(f"device list unavailable: {e}", delay=1.0) from e
        return reply.devices

    async def place(self, req: PlaceRequest) -> PlaceReply:
        validating.validate(req.spec)  # SpecError -> ErrorReply via the bus middleware
        devices = await self.devices()
        reserved = {k: (v.cpu, float(v.memory_mb)) for k, v in req.reserved.items()}
        span = trace.get_current_span()
        span.set_attribute("echo.dataflow", req.dataflow)
        span.set_attribute("echo.devices", len(devices))
        try:
            placement = placing.place(req.dataflow, req.spec, devices, reserved, self.names)
        except PlacementError as e:
            log.info("dataflow %s cannot be placed: %s", req.dataflow, e)
            return PlaceReply(ok=False, reason=str(e))
        return PlaceReply(ok=True, placement=placement)
