"""Migrator settings (environment, prefix ``ECHO_``)."""

from __future__ import annotations

from echo_shared.settings import CommonSettings, NatsSettings, RedisSettings


class MigratorSettings(CommonSettings, NatsSettings, RedisSettings):
    service_name: str = "echo-migrator"
