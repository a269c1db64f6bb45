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
    accelerators: dict[str, int] = Field(
        default_factory=dict, description="accelerators needed, by kind (e.g. {gpu: 1}); counts are reserved"
    )
    colocate_with: list[Identifier] = Field(
        default_factory=list, description="tasks of this dataflow that must run on the same device"
    )
    anti_affinity: list[Identifier] = Field(
        default_factory=list, description="tasks of this dataflow that must not run on the same device"
    )

    def tiers(self) -> list[Tier]:
        if self.tier is None:
            return []
        return [self.tier] if isinstance(self.tier, Tier) else list(self.tier)


class Resources(Strict):
    cpu: float = Field(default=0.1, ge=0, le=1024, description="CPU cores")
    memory_mb: int = Field(default=32, ge=0, le=16 * 1024 * 1024, description="memory in MiB")
    worker: bool = Field(
        default=False,
        description="run the operator in a worker process of its own (a core of its own) instead of "
        "the agent's event loop; user (python:) operators always do. Only operators that transform "
        "records (no broker, file or program of the agent's) can",
    )


class Hints(Strict):
    """What the scheduler assumes about a task's traffic (observed rates replace them once running)."""

    rate: float | None = Field(default=None, ge=0, description="records/s a source emits")
    selectivity: float | None = Field(default=None, ge=0, description="records out per record in")
    record_bytes: int | None = Field(default=None, ge=1, description="bytes of an output record")
    cost: float | None = Field(
        default=None,
        gt=0,
        le=1_000_000,
        description="CPU per input record (per output record for a source), relative to forwarding one "
        "record (core.passthrough = 1); default: the operator's own estimate",
    )


class TaskSpec(Strict):
    id: Identifier
    operator: str = Field(min_length=1, max_length=256)
    config: dict[str, Any] = Field(default_factory=dict)
    placement: PlacementConstraints = Field(default_factory=PlacementConstraints)
    resources: Resources = Field(default_factory=Resources)
    hints: Hints = Field(default_factory=Hints)


class EdgeModel(StrEnum):
    stream = "stream"  # record by record: one record per message
    batch = "batch"  # micro-batches: one message per batch, closed by count or time
    file = "file"  # files: chunked, checksummed, streamed; the consumer gets a local path


class BatchSpec(Strict):
    count: int = Field(default=100, ge=1, le=100_000, description="close a batch at this many records")
    seconds: float = Field(default=1.0, gt=0, le=3600, description="... or this long after its first record")
    adaptive: bool = Field(
        default=False,
        description="... or as soon as the edge has no batch in flight (the producer is done with "
        "what it had in hand, and the broker acknowledged the batch before): batches grow with "
        "the load, a record waits only while an earlier batch is on its way (seconds bounds it)",
    )


class SpoolSpec(Strict):
    """How the producer of an edge keeps what it cannot send while its broker is out of reach
    (on the producing device's disk). Unset fields take the device's defaults
    (``ECHO_SPOOL_MAX_BYTES``, ``ECHO_SPOOL_MAX_AGE``, ``ECHO_SPOOL_OVERFLOW``)."""

    max_bytes: int | None = Field(
        default=None, ge=4096, le=1 << 50, description="bytes on disk the edge's spool may hold"
    )
    max_age: float | None = Field(
        default=None, gt=0, le=365 * 86400, description="seconds a spooled message is kept at most"
    )
    overflow: Literal["drop_oldest", "block"] | None = Field(
        default=None,
        description="when the spool is full: drop the oldest unsent messages (counted, and the "
        "consumer is told what was skipped), or block the producing task until there is room",
    )


class EdgeSpec(Strict):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    from_: str = Field(alias="from", min_length=1)
    to: str = Field(min_length=1)
    model: EdgeModel = EdgeModel.stream
    batch: BatchSpec | None = Field(default=None, description="limits of a batch edge's micro-batches")
    spool: SpoolSpec | None = Field(
        default=None, description="the producer's on-disk spool for this edge while cut off"
    )

    @model_validator(mode="after")
    def _batch_only_on_batch_edges(self) -> EdgeSpec:
        if self.batch is not None and self.model is not EdgeModel.batch:
            raise ValueError("batch limits apply only to edges with model: batch")
        return self

    @property
    def batch_limits(self) -> BatchSpec:
        return self.batch or BatchSpec()


class PlacementStrategy(StrEnum):
    round_robin = "round-robin"  # the original ECHO: input tasks pinned, the rest device by device
    greedy = "greedy"  # the default: one pass in dependency order, scales to large DAGs and fleets
    optimal = "optimal"  # an ILP (HiGHS) for small DAGs, with a time limit and greedy as fallback


class DataflowSpec(Strict):
    name: Identifier
    tasks: list[TaskSpec] = Field(min_length=1)
    edges: list[EdgeSpec] = Field(default_factory=list)
    placement_strategy: PlacementStrategy = PlacementStrategy.greedy

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
    revoked = "revoked"  # its identity was revoked: it can no longer reach the brokers


class Capacity(Strict):
    cpu: float = Field(default=1.0, ge=0)
    memory_mb: int = Field(default=1024, ge=0)
    records_per_s: float | None = Field(
        default=None,
        gt=0,
        description="records/s one core of this agent forwards through a stream task (the agent "
        "measures it at start unless declared); placement keeps the agent's event loop, and its "
        "cores, from saturating",
    )


class Link(Strict):
    """A network path's properties (declared at registration, or measured)."""

    latency_ms: float = Field(ge=0, description="one-way latency")
    bandwidth_mbps: float = Field(gt=0, description="usable bandwidth in megabits per second")


class Connectivity(Strict):
    """Which brokers a device's data plane reaches, and whether it can be dialled."""

    brokers: list[str] = Field(
        default_factory=lambda: ["mqtt"],
        description="data brokers this device reaches: 'mqtt' (the platform's MQTT broker), "
        "'nats' (the platform's NATS with JetStream)",
    )
    inbound: bool = Field(default=False, description="accepts inbound connections (not behind NAT)")


class DeviceInfo(Strict):
    """What an agent declares about its device when it registers."""

    id: Identifier
    tier: Tier
    capacity: Capacity = Field(default_factory=Capacity)
    labels: dict[str, str] = Field(default_factory=dict)
    input_streams: list[str] = Field(default_factory=list)
    runtimes: list[str] = Field(default_factory=lambda: ["python"])
    accelerators: dict[str, int] = Field(
        default_factory=dict, description="accelerators by kind, e.g. {gpu: 1}"
    )
    site: str = Field(default="", description="where the device is; devices of one site share a LAN")
    connectivity: Connectivity = Field(default_factory=Connectivity)
    links: dict[str, Link] = Field(
        default_factory=dict, description="declared paths from this device to other sites (by site name)"
    )
    uplink: Link | None = Field(default=None, description="this device's path to the brokers, if declared")
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
    accelerators: dict[str, int] = Field(default_factory=dict)
    site: str = ""
    connectivity: Connectivity = Field(default_factory=Connectivity)
    links: dict[str, Link] = Field(default_factory=dict)
    uplink: Link | None = None
    arch: str = ""
    hostname: str = ""
    agent_version: str = ""
    reaches_nats: bool = False
    rtt_ms: dict[str, float] = Field(
        default_factory=dict, description="measured round trip to each broker the device reaches"
    )
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
    satisfied: list[str] = Field(default_factory=list, description="the hard constraints it met there")
    costs: dict[str, float] = Field(default_factory=dict, description="the cost terms of this choice")
    runner_up: str | None = Field(default=None, description="the next best device, if any")
    runner_up_reason: str = ""


class ChannelSpec(Strict):
    """The transport of one edge (or of one leg of an edge through a relay)."""

    from_task: str
    to_task: str
    transport: Literal["mqtt", "nats"] = "mqtt"
    topic: str = Field(description="MQTT topic or NATS subject")
    reason: str = ""


class RelayPlacement(Strict):
    """A relay task the scheduler added: it forwards an edge between two brokers."""

    id: str
    device: str
    from_task: str
    to_task: str
    reason: str


class Placement(Strict):
    tasks: list[TaskPlacement]
    channels: list[ChannelSpec]
    relays: list[RelayPlacement] = Field(default_factory=list)
    strategy: str = "greedy"
    cost: dict[str, float] = Field(default_factory=dict, description="the objective's terms, summed")

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


class ChannelCounts(Strict):
    """What a producing task sent on one output channel (this copy of the task)."""

    transport: Literal["mqtt", "nats"]
    messages: int = Field(default=0, ge=0, description="messages published (first sends)")
    bytes: int = Field(default=0, ge=0, description="payload bytes of those messages")
    retransmits: int = Field(default=0, ge=0, description="messages published again (lost or unconfirmed)")
    spooled: int = Field(
        default=0, ge=0, description="messages written to the on-disk spool (broker out of reach)"
    )
    spool_bytes: int = Field(default=0, ge=0, description="bytes the spool holds on disk now")
    dropped: int = Field(default=0, ge=0, description="records the spool dropped (full or too old)")


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
    rate_out: float = 0.0  # observed records/s out (placement uses it instead of the hints)
    out_seq: int = 0  # the last seq it emitted, as last reported
    hwm: dict[str, int] = Field(default_factory=dict)  # the last seq taken from each producer
    channels: dict[str, ChannelCounts] = Field(default_factory=dict)  # consumer -> what it was sent
    traceparent: str = ""  # the move that made this generation: its deployment belongs to that trace
    restore: dict[str, Any] | None = None  # the snapshot a moved task continues from
    fenced: dict[str, int] = Field(
        default_factory=dict,
        description="stale copies left on devices that were cut off when the task failed over "
        "(device -> generation): stopped when the device comes back",
    )
