"""Master settings (environment, prefix ``ECHO_``)."""

from __future__ import annotations

import uuid
from pathlib import Path

from pydantic import Field

from echo_shared.settings import CommonSettings, MqttSettings, NatsSettings, RedisSettings, ReplicaSettings


class MasterSettings(CommonSettings, NatsSettings, MqttSettings, RedisSettings, ReplicaSettings):
    service_name: str = "echo-master"
    api_host: str = Field(default="0.0.0.0", description="address the REST API binds")
    api_port: int = Field(default=8099, ge=0, le=65535)
    command_timeout: float = Field(default=2.0, gt=0, description="seconds to wait for an agent's ack")
    reconcile_period: float = Field(default=0.5, gt=0, description="seconds between reconcile sweeps")
    scheduler_timeout: float = Field(default=5.0, gt=0)
    stop_wait: float = Field(default=5.0, ge=0, description="seconds DELETE waits for the stop to finish")
    max_body_bytes: int = Field(default=1 << 20, gt=0)
    legacy_class_map: Path | None = Field(
        default=None,
        description="a JSON or YAML file mapping more NiFi processor classes of POST /DAG to operators",
    )
    state_inline_max_bytes: int = Field(
        default=256 * 1024,
        gt=0,
        description="operator state larger than this (JSON) goes to the NATS object store, not Redis",
    )
    device_mqtt_url: str | None = Field(
        default=None,
        description="the MQTT URL enrolled devices get (default: the master's own ECHO_MQTT_URL)",
    )
    device_nats_url: str | None = Field(
        default=None,
        description="the NATS URL enrolled devices that reach NATS get (default: ECHO_NATS_URL)",
    )
    rotation_grace: float = Field(
        default=60.0, gt=0, description="seconds a device's old login keeps working after a rotation"
    )
    # ---------------------------------------------------------------- API security
    admin_token_file: Path | None = Field(
        default=None,
        description="a 0600 file holding the first admin API token, registered at start as id 'bootstrap'",
    )
    api_tls: bool = Field(default=False, description="serve the REST API over HTTPS")
    api_cert_file: Path | None = Field(default=None, description="the API's certificate chain (PEM)")
    api_key_file: Path | None = Field(default=None, description="the API certificate's key (PEM, 0600)")
    token_cache_seconds: float = Field(
        default=1.0,
        ge=0,
        le=1.0,
        description="how long a verified token is remembered in-process (revocation takes that long)",
    )
    console_session_seconds: float = Field(
        default=8 * 3600.0,
        gt=0,
        description="how long a web console session lasts (at most its token's life)",
    )
    boot_id: str = Field(
        default_factory=lambda: uuid.uuid4().hex,
        description="this process's id in /healthz (a supervisor sets it to know the API is its own)",
    )
    grafana_url: str | None = Field(
        default=None, description="Grafana's address: the console links trace ids to its Explore view"
    )
    audit_max_entries: int = Field(
        default=10_000, gt=0, description="the audit stream is capped near this many entries"
    )
