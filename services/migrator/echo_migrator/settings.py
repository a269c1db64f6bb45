"""Migrator settings (environment, prefix ``ECHO_``)."""

from __future__ import annotations

from pydantic import Field

from echo_shared.settings import CommonSettings, NatsSettings, RedisSettings, ReplicaSettings


class MigratorSettings(CommonSettings, NatsSettings, RedisSettings, ReplicaSettings):
    service_name: str = "echo-migrator"
    request_timeout: float = Field(default=5.0, gt=0, description="seconds for a scheduler/registry request")
    move_timeout: float = Field(
        default=5.0,
        gt=0,
        description=(
            "seconds to wait for the master's answer to a move step before asking again (asked "
            "again, a move under way is joined, not repeated; a master restarted meanwhile answers)"
        ),
    )
    saga_retry_for: float = Field(
        default=120.0,
        gt=0,
        description="seconds a migration step that gets no answer (a service restarting) is asked again",
    )
    resume_timeout: float = Field(
        default=30.0, gt=0, description="seconds the new copy may take to run before the move is rolled back"
    )
    poll_interval: float = Field(default=0.05, gt=0, description="seconds between looks at a moving task")

    # adaptive rebalancing
    rebalance_enabled: bool = Field(default=True, description="move tasks off overloaded devices")
    rebalance_period: float = Field(default=1.0, gt=0, description="seconds between looks at the fleet")
    overload_cpu_percent: float = Field(default=85.0, gt=0, description="CPU above this is overload")
    overload_memory_percent: float = Field(default=90.0, gt=0, description="memory above this is overload")
    overload_lag: int = Field(default=50_000, gt=0, description="records a task's input lags behind")
    overload_window: float = Field(
        default=30.0, gt=0, description="seconds a device must stay overloaded before a task moves"
    )
    overload_cooldown: float = Field(
        default=120.0, gt=0, description="seconds after a move before the same device or task moves again"
    )
