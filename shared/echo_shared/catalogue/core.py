"""Core operators: generate, passthrough, count by key, file sink."""

from __future__ import annotations

from typing import Any

from pydantic import Field

from .base import OperatorConfig, OperatorInfo, Role, entries


class GenerateConfig(OperatorConfig):
    count: int = Field(ge=0, description="number of records to emit")
    rate: float = Field(default=0.0, ge=0, description="records per second; 0 = as fast as possible")
    fields: dict[str, Any] = Field(default_factory=dict, description="merged into every record")


class PassthroughConfig(OperatorConfig):
    pass


class CountByKeyConfig(OperatorConfig):
    key: str = Field(min_length=1, description="record field whose values are counted")


class FileSinkConfig(OperatorConfig):
    path: str = Field(min_length=1, description="file on the device; one JSON line per record")


class RelayConfig(OperatorConfig):
    pass


CATALOGUE = entries(
    OperatorInfo(
        "core.relay",
        Role.transform,
        RelayConfig,
        summary="forward an edge between two brokers (added by the scheduler, records or files)",
    ),
    OperatorInfo(
        "io.generate", Role.source, GenerateConfig, stateful=True, summary="emit count records {seq: i}"
    ),
    OperatorInfo("core.passthrough", Role.transform, PassthroughConfig, summary="forward every record"),
    OperatorInfo(
        "stats.count_by_key",
        Role.transform,
        CountByKeyConfig,
        stateful=True,
        deltas=True,
        summary="count records per value of config.key",
    ),
    OperatorInfo("io.file_sink", Role.sink, FileSinkConfig, summary="append records as JSON lines"),
)
