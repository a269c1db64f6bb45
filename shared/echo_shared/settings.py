"""Settings common to every ECHO process.

Values come from environment variables prefixed ``ECHO_`` (pydantic-settings) plus the
standard ``OTEL_*`` variables read by OpenTelemetry itself. Settings objects are built
once in a service's ``__main__`` and passed in; nothing reads the environment at import.
No host, port or secret has a default here: a missing broker URL is a clear start-up error.
"""

from __future__ import annotations

import socket
from pathlib import Path

from pydantic import Field, field_validator
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

    nats_url: str = Field(
        description="NATS server URL, e.g. nats://host:4222; a cluster's nodes separated by commas"
    )
    jetstream_replicas: int = Field(
        default=1,
        ge=1,
        le=5,
        description="copies of each JetStream stream and bucket a service creates (3 on a 3-node "
        "cluster: one node's loss loses nothing)",
    )


class MqttSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="ECHO_", extra="ignore")

    mqtt_url: str = Field(description="MQTT broker URL, e.g. mqtt://host:1883")


class RedisSettings(BaseSettings):
    # a bad value is not echoed in the ValidationError (``input_value=``): a Redis URL may
    # hold a password, and the error lands in the start-up log. Merged into every settings
    # class composed with this one (pydantic's configuration is the model's, not a field's),
    # which is as it should be: no setting's secret belongs in a log.
    model_config = SettingsConfigDict(env_prefix="ECHO_", extra="ignore", hide_input_in_errors=True)

    redis_url: str = Field(
        description="Redis URL, e.g. rediss://host:6379/0, or its sentinels: "
        "rediss+sentinel://h1:26379,h2:26379,h3:26379/<primary name>/0"
    )

    @field_validator("redis_url")
    @classmethod
    def _sentinels(cls, url: str) -> str:
        from .redis_store import is_sentinel_url, sentinel_address  # redis-py: only when used

        if is_sentinel_url(url):
            sentinel_address(url)  # a ValueError names what is wrong, not the URL (a password?)
        return url


class ReplicaSettings(BaseSettings):
    """A service that runs as several replicas, one of which leads (``echo_shared.leases``)."""

    model_config = SettingsConfigDict(env_prefix="ECHO_", extra="ignore")

    replica: str | None = Field(
        default=None,
        pattern=r"^[A-Za-z0-9_-]{1,64}$",
        description="which replica of its service this process is: its MQTT client id ends with it "
        "(auto: the host name, for compose replicas); unset: the only one",
    )
    leader_ttl: float = Field(
        default=5.0,
        gt=0,
        description="seconds the leader's lease lasts unrenewed: a standby replica takes over within "
        "this plus 0.5 s of the leader's end",
    )

    def replica_suffix(self) -> str:
        """What tells this replica's broker sessions apart from the others' ("" if unset)."""
        if self.replica is None:
            return ""
        name = socket.gethostname() if self.replica == "auto" else self.replica
        return "-" + "".join(c if c.isalnum() or c in "-_" else "-" for c in name)[:64]


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
