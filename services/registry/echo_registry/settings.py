"""Registry settings (environment, prefix ``ECHO_``)."""

from __future__ import annotations

from pydantic import Field

from echo_shared.settings import (
    CommonSettings,
    LivenessSettings,
    MqttSettings,
    NatsSettings,
    RedisSettings,
    ReplicaSettings,
)


class RegistrySettings(
    CommonSettings, NatsSettings, MqttSettings, RedisSettings, LivenessSettings, ReplicaSettings
):
    service_name: str = "echo-registry"
    liveness_period: float = Field(default=0.25, gt=0, description="seconds between liveness sweeps")
