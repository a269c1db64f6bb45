"""The catalogue of built-in operators: name, role, runtime and config schema.

The scheduler validates specs against it; the agent implements each entry (its
implementations register under the same names). Keeping the catalogue here means
both sides agree on what an operator accepts without importing each other.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from .errors import Problem


class Role(StrEnum):
    source = "source"  # no inputs; produces records, may finish
    transform = "transform"  # inputs and outputs
    sink = "sink"  # inputs, no outputs


class OperatorConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")


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


@dataclass(frozen=True)
class OperatorInfo:
    name: str
    role: Role
    config: type[OperatorConfig]
    stateful: bool = False
    runtime: str = "python"
    summary: str = ""


CATALOGUE: dict[str, OperatorInfo] = {
    info.name: info
    for info in (
        OperatorInfo("io.generate", Role.source, GenerateConfig, summary="emit count records {seq: i}"),
        OperatorInfo("core.passthrough", Role.transform, PassthroughConfig, summary="forward every record"),
        OperatorInfo(
            "stats.count_by_key",
            Role.transform,
            CountByKeyConfig,
            stateful=True,
            summary="count records per value of config.key",
        ),
        OperatorInfo("io.file_sink", Role.sink, FileSinkConfig, summary="append records as JSON lines"),
    )
}


def lookup(name: str) -> OperatorInfo | None:
    return CATALOGUE.get(name)


def config_problems(info: OperatorInfo, config: dict[str, Any], where: str) -> list[Problem]:
    """Validate an operator config; each problem is located under ``where`` (``tasks[0].config``)."""
    try:
        info.config.model_validate(config)
    except ValidationError as e:
        return [
            Problem(
                loc=join_loc(where, err["loc"]),
                msg=err["msg"],
                type=err["type"],
            )
            for err in e.errors()
        ]
    return []


def join_loc(prefix: str, loc: tuple[int | str, ...] | list[int | str]) -> str:
    """``("tasks", 2, "operator")`` -> ``tasks[2].operator``, appended to ``prefix``."""
    out = prefix
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out
