"""The scheduler's NATS handlers: validate and place (the I/O around the pure core)."""

from __future__ import annotations

import logging
import time

from opentelemetry import trace

from echo_shared.errors import BusError, PlacementError, Problem
from echo_shared.messages import (
    PlaceReply,
    PlaceRequest,
    ValidateReply,
    ValidateRequest,
)
from echo_shared.models import DeviceRecord
from echo_shared.names import Names
from echo_shared.nats_bus import NatsBus
from echo_shared.registry_client import list_devices

from . import placing, validating
from .devices import DeviceView
from .errors import RegistryUnavailable
from .fleet import Reservation
from .metrics import SchedulerMetrics

log = logging.getLogger(__name__)

ROUTE_CHECK_TIMEOUT = 1.0  # the validation's device list: a slow registry skips the route check


class SchedulerService:
    def __init__(self, bus: NatsBus, names: Names, registry_timeout: float) -> None:
        self.bus = bus
        self.names = names
        self.registry_timeout = registry_timeout
        self.view = DeviceView(self._list_devices)
        self.metrics = SchedulerMetrics()

    async def validate(self, req: ValidateRequest) -> ValidateReply:
        found = validating.problems(req.spec)
        if not found:
            found = await self.route_problems(req)
        return ValidateReply(ok=not found, problems=[p.as_dict() for p in found])

    async def route_problems(self, req: ValidateRequest) -> list[Problem]:
        """Edges that cannot be connected wherever their tasks may run on the current devices
        (a dry run of the placement's route check); other placement failures depend on the
        moment and are reported later, in the dataflow's state."""
        if not req.spec.edges:
            return []
        try:
            devices = await self.devices(timeout=min(self.registry_timeout, ROUTE_CHECK_TIMEOUT))
        except RegistryUnavailable as e:
            log.warning("route check skipped: %s", e)
            return []
        return [
            Problem(err.loc, str(err), "no_route")
            for err in placing.route_problems(req.spec, devices)
            if err.pinned
        ]

    async def devices(self, timeout: float | None = None) -> list[DeviceRecord]:
        return await self.view.devices(timeout)

    async def _list_devices(self, timeout: float | None = None) -> list[DeviceRecord]:
        try:
            return await list_devices(self.bus, self.names, timeout=timeout or self.registry_timeout)
        except BusError as e:
            raise RegistryUnavailable(f"device list unavailable: {e}", delay=1.0) from e

    async def place(self, req: PlaceRequest) -> PlaceReply:
        moving = req.neighbourhood and bool(req.pinned)
        if not moving:  # a move is of a dataflow as accepted: validated then, read in part now
            validating.validate(req.spec)  # SpecError -> ErrorReply via the bus middleware
        devices = await self.devices()
        reserved: dict[str, Reservation] = {
            k: (v.cpu, float(v.memory_mb), dict(getattr(v, "accelerators", None) or {}))
            for k, v in req.reserved.items()
        }
        span = trace.get_current_span()
        span.set_attribute("echo.dataflow", req.dataflow)
        span.set_attribute("echo.devices", len(devices))
        span.set_attribute("echo.strategy", req.spec.placement_strategy.value)
        started = time.perf_counter()
        try:
            if moving:
                placement = placing.place_moving(
                    req.dataflow,
                    req.spec,
                    devices,
                    req.pinned,
                    reserved,
                    self.names,
                    req.rates,
                    avoid=req.avoid,
                )
            else:
                placement = placing.place(
                    req.dataflow,
                    req.spec,
                    devices,
                    reserved,
                    self.names,
                    req.rates,
                    pinned=req.pinned,
                    avoid=req.avoid,
                )
        except PlacementError as e:
            self.metrics.placements.labels("unplaceable").inc()
            log.info("dataflow %s cannot be placed: %s", req.dataflow, e)
            return PlaceReply(ok=False, reason=str(e))
        finally:
            self.metrics.duration.observe(time.perf_counter() - started)
        self.metrics.placements.labels("placed").inc()
        span.set_attribute("echo.placement.strategy", placement.strategy)
        return PlaceReply(ok=True, placement=placement)
