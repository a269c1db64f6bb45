"""Settings common to every ECHO process.

Values come from environment variables prefixed ``ECHO_`` (pydantic-settings) plus the
standard ``OTEL_*`` variables read by OpenTelemetry itself. Settings objects are built
once in a service's ``__main__`` and passed in; nothing reads the environment at import.
No host, port or secret has a default here: a missing broker URL is a clear start-up error.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class CommonSettings(BaseSettings):
    """Settings every service shares."""

    model_config = SettingsConfigDict(env_prefix="ECHO_", extra="ignore")

    namespace: str = Field(
        default="echo",
        pattern=r"^[a-z][a-z0-9_-]{0,31}$",
        description="Prefix of every topic, subject and key; lets several platforms share brokers.",
    )
    log_level: str = "INFO"
    service_name: str = "echo"
    credentials_file: Path | None = Field(
        default=None,
        description="this identity's broker credentials (JSON, mode 0600; see echo_shared.credentials)",
    )
    ca_file: Path | None = Field(
        default=None, description="the CA certificate that signs the brokers' and the API's certificates"
    )
    metrics_port: int = Field(
        default=0, ge=0, le=65535, description="serve Prometheus metrics on this port (0: no endpoint)"
    )
    metrics_host: str = Field(default="127.0.0.1", description="the address the metrics endpoint listens on")
    metrics_cert_file: Path | None = Field(
        default=None, description="the metrics endpoint's certificate (PEM); clients need one of the CA"
    )
    metrics_key_file: Path | None = Field(default=None, description="that certificate's key (PEM, 0600)")


class NatsSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="ECHO_", extra="ignore")

    nats_url: str = Field(description="NATS server URL, e.g. nats://host:4222")


class MqttSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="ECHO_", extra="ignore")

    mqtt_url: str = Field(description="MQTT broker URL, e.g. mqtt://host:1883")


class RedisSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="ECHO_", extra="ignore")

    redis_url: str = Field(description="Redis URL, e.g. redis://host:6379/0")


class LivenessSettings(BaseSettings):
    """Heartbeat timing shared by agents (sending) and the registry (judging)."""

    model_config = SettingsConfigDict(env_prefix="ECHO_", extra="ignore")

    heartbeat_interval: float = Field(default=1.0, gt=0, description="Seconds between agent heartbeats.")
    unreachable_after: float = Field(
        default=3.5, gt=0, description="Seconds without a heartbeat before a device is unreachable."
    )
    lost_after: float = Field(
        default=15.0, gt=0, description="Seconds without a heartbeat before a device is lost."
    )
