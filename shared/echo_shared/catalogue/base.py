"""The vocabulary of the operator catalogue: roles, kinds of data, operator entries."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from pydantic import BaseModel, ConfigDict


class Role(StrEnum):
    source = "source"  # no inputs; produces records, may finish
    transform = "transform"  # inputs and outputs
    sink = "sink"  # inputs, no outputs
    any = "any"  # decided by the edges (user operators): a source without inputs


class Kind(StrEnum):
    """What an operator consumes or produces.

    ``records``: JSON records; they travel on ``stream`` edges (one record per message)
    or ``batch`` edges (one micro-batch per message). ``files``: records that name a file
    on the device (``{"path": ..., "name": ..., "size": ...}``); they travel on ``file``
    edges, which move the file's bytes, so the consumer gets a local path.
    """

    records = "records"
    files = "files"


class OperatorConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")


@dataclass(frozen=True)
class OperatorInfo:
    name: str
    role: Role
    config: type[OperatorConfig]
    stateful: bool = False
    runtime: str = "python"
    summary: str = ""
    consumes: Kind = Kind.records
    produces: Kind = Kind.records
    # for operators whose kinds depend on their config (the process runtime's modes)
    kinds: Callable[[Any], tuple[Kind, Kind]] | None = None
    # CPU per input record, relative to forwarding one (core.passthrough = 1: decoding,
    # bookkeeping and encoding a record in the agent); placement's estimate of the load a task
    # puts on its agent (``hints.cost`` overrides it). Measured on the ETL chain: SenML parsing
    # costs about 16 us a record on top of the ~10 us of forwarding it
    cost: float = 1.0
    # its state moves by pre-copy: the operator says what changed since a snapshot
    # (``Operator.delta``), so a move stages the bulk on the target while the task runs
    deltas: bool = False

    @property
    def can_run_in_worker(self) -> bool:
        """Whether it can run in a worker process (``resources.worker``): an operator of the
        python runtime that transforms records and touches no broker, file or program of the
        agent's (every ``io.*``, the relay and the file operators run in the agent)."""
        return (
            self.runtime == "python"
            and not self.name.startswith(("io.", "core.relay"))
            and self.kinds is None
            and self.consumes is Kind.records
            and self.produces is Kind.records
        )

    def kinds_for(self, config: dict[str, Any]) -> tuple[Kind, Kind]:
        """(consumes, produces) for this config (falls back to the static kinds)."""
        if self.kinds is not None:
            try:
                return self.kinds(self.config.model_validate(config))
            except Exception:  # an invalid config is reported by config validation
                pass
        return self.consumes, self.produces


def entries(*infos: OperatorInfo) -> dict[str, OperatorInfo]:
    return {i.name: i for i in infos}
