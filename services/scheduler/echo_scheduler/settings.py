"""Scheduler settings (environment, prefix ``ECHO_``)."""

from __future__ import annotations

from pydantic import Field

from echo_shared.settings import CommonSettings, NatsSettings


class SchedulerSettings(CommonSettings, NatsSettings):
    service_name: str = "echo-scheduler"
    registry_timeout: float = Field(default=3.0, gt=0, description="seconds to wait for the device list")
