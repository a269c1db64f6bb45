"""Domain models: the dataflow spec, devices, placements and task records.

These are the nouns of DESIGN.md §1. Bus messages that carry them are in
``messages.py``. Every model forbids unknown fields, so a typo in a spec is reported
instead of silently ignored.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

Identifier = Annotated[
    str,
    Field(
        pattern=r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$",
        description="letters, digits, '_' and '-', at most 64 characters, starting with a letter or digit",
    ),
]


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Tier(StrEnum):
    edge = "edge"
    fog = "fog"
    cloud = "cloud"


# --------------------------------------------------------------------------------- spec


class PlacementConstraints(Strict):
    tier: Tier | list[Tier] | None = Field(default=None, description="allowed tier(s)")
    input_stream: str | None = Field(default=None, description="run on the device hosting this stream")
    labels: dict[str, str] = Field(default_factory=dict, description="every label must match")
    device: Identifier | None = Field(default=None, description="run on exactly this device")

    def tiers(self) -> list[Tier]:
        if self.tier is None:
            return []
        return [self.tier] if isinstance(self.tier, Tier) else list(self.tier)


class Resources(Strict):
    cpu: float = Field(default=0.1, ge=0, le=1024, description="CPU cores")
    memory_mb: int = Field(default=32, ge=0, le=16 * 1024 * 1024, description="memory in MiB")


class TaskSpec(Strict):
    id: Identifier
    operator: str = Field(min_length=1, max_length=256)
    config: dict[str, Any] = Field(default_factory=dict)
    placement: PlacementConstraints = Field(default_factory=PlacementConstraints)
    resources: Resources = Field(default_factory=Resources)


class EdgeModel(StrEnum):
    stream = "stream"  # record by record: one record per message
    batch = "batch"  # micro-batches: one message per batch, closed by count or time
    file = "file"  # files: chunked, checksummed, streamed; the consumer gets a local path


class BatchSpec(Strict):
    count: int = Field(default=100, ge=1, le=100_000, description="close a batch at this many records")
    seconds: float = Field(default=1.0, gt=0, le=3600, description="... or this long after its first record")


class EdgeSpec(Strict):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    from_: str = Field(alias="from", min_length=1)
    to: str = Field(min_length=1)
    model: EdgeModel = EdgeModel.stream
    batch: BatchSpec | None = Field(default=None, description="limits of a batch edge's micro-batches")

    @model_validator(mode="after")
    def _batch_only_on_batch_edges(self) -> EdgeSpec:
        if self.batch is not None and self.model is not EdgeModel.batch:
            raise ValueError("batch limits apply only to edges with model: batch")
        return self

    @property
    def batch_limits(self) -> BatchSpec:
        return self.batch or BatchSpec()


class DataflowSpec(Strict):
    name: Identifier
    tasks: list[TaskSpec] = Field(min_length=1)
    edges: list[EdgeSpec] = Field(default_factory=list)

    @field_validator("tasks")
    @classmethod
    def _not_too_many(cls, v: list[TaskSpec]) -> list[TaskSpec]:
        if len(v) > 100_000:
            raise ValueError("at most 100000 tasks")
        return v

    def task(self, task_id: str) -> TaskSpec:
        for t in self.tasks:
            if t.id == task_id:
                return t
        raise KeyError(task_id)

    def inputs_of(self, task_id: str) -> list[str]:
        return [e.from_ for e in self.edges if e.to == task_id]

    def outputs_of(self, task_id: str) -> list[str]:
        return [e.to for e in self.edges if e.from_ == task_id]


# -------------------------------------------------------------------------------- devices


class DeviceStatus(StrEnum):
    online = "online"
    unreachable = "unreachable"
    lost = "lost"


class Capacity(Strict):
    cpu: float = Field(default=1.0, ge=0)
    memory_mb: int = Field(default=1024, ge=0)


class DeviceInfo(Strict):
    """What an agent declares about its device when it registers."""

    id: Identifier
    tier: Tier
    capacity: Capacity = Field(default_factory=Capacity)
    labels: dict[str, str] = Field(default_factory=dict)
    input_streams: list[str] = Field(default_factory=list)
    runtimes: list[str] = Field(default_factory=lambda: ["python"])
    arch: str = ""
    hostname: str = ""
    agent_version: str = ""
    reaches_nats: bool = False


class DeviceRecord(Strict):
    """The registry's view of a device (stored in Redis, served by the API)."""

    id: Identifier
    tier: Tier
    capacity: Capacity
    labels: dict[str, str] = Field(default_factory=dict)
    input_streams: list[str] = Field(default_factory=list)
    runtimes: list[str] = Field(default_factory=list)
    arch: str = ""
    hostname: str = ""
    agent_version: str = ""
    reaches_nats: bool = False
    status: DeviceStatus = DeviceStatus.online
    status_since: float = 0.0
    registered_at: float = 0.0
    last_heartbeat: float | None = None
    cpu_percent: float | None = None
    memory_percent: float | None = None
    tasks: int = 0

    @classmethod
    def from_info(cls, info: DeviceInfo, now: float) -> DeviceRecord:
        return cls(
            **info.model_dump(),
            status=DeviceStatus.online,
            status_since=now,
            registered_at=now,
            last_heartbeat=now,
        )


# ------------------------------------------------------------------------------ placement


class TaskPlacement(Strict):
    task: str
    device: str
    reason: str


class ChannelSpec(Strict):
    """The transport of one edge."""

    from_task: str
    to_task: str
    transport: Literal["mqtt"] = "mqtt"
    topic: str
    reason: str = ""


class Placement(Strict):
    tasks: list[TaskPlacement]
    channels: list[ChannelSpec]

    def device_of(self, task: str) -> str:
        for p in self.tasks:
            if p.task == task:
                return p.device
        raise KeyError(task)


# ------------------------------------------------------------------------- lifecycle states


class DataflowState(StrEnum):
    pending = "pending"
    scheduled = "scheduled"
    deploying = "deploying"
    running = "running"
    completed = "completed"
    stopping = "stopping"
    stopped = "stopped"
    failed = "failed"


class DesiredState(StrEnum):
    running = "running"
    stopped = "stopped"


class TaskState(StrEnum):
    pending = "pending"
    deploying = "deploying"
    running = "running"
    finished = "finished"
    stopping = "stopping"
    stopped = "stopped"
    failed = "failed"


class TaskRecord(Strict):
    """The master's record of one task of a dataflow (Redis)."""

    id: str
    operator: str
    device: str | None = None
    state: TaskState = TaskState.pending
    generation: int = 0
    reason: str = ""
    placement_reason: str = ""
    updated_at: float = 0.0
    last_command_at: float = 0.0
    attempts: int = 0
    records_in: int = 0
    records_out: int = 0
    restore: dict[str, Any] | None = None  # the snapshot a moved task continues from
