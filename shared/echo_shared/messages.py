"""Every message that crosses NATS or MQTT, as a pydantic model (``extra="forbid"``).

``tests/unit/test_message_schemas.py`` fails when the JSON Schemas exported from this
module drift from the committed copy in ``schemas/messages.json``
(regenerate with ``make schemas`` after an intended change).

Trace context never sits in a body: it travels in NATS headers and MQTT 5 user
properties (see ``telemetry.py``).
"""

from __future__ import annotations

from typing import Annotated, Any, Literal, Self

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter

from .models import (
    BatchSpec,
    DataflowSpec,
    DeviceInfo,
    DeviceRecord,
    DeviceStatus,
    EdgeModel,
    Placement,
    Resources,
    TaskState,
)


class Message(BaseModel):
    model_config = ConfigDict(extra="forbid")

    def to_bytes(self) -> bytes:
        return self.model_dump_json(by_alias=True).encode()

    @classmethod
    def from_bytes(cls, data: bytes | str) -> Self:
        return cls.model_validate_json(data)


# ----------------------------------------------------------------- agent <-> registry (MQTT)


class DeviceHello(Message):
    """Registration, sent by an agent at every (re)connect; retained."""

    device: DeviceInfo
    boot_id: str = Field(description="changes each time the agent process starts")
    ts: float


class TaskBrief(Message):
    dataflow: str
    task: str
    generation: int
    state: TaskState


class Heartbeat(Message):
    device: str
    boot_id: str
    ts: float
    cpu_percent: float
    memory_percent: float
    tasks: list[TaskBrief] = Field(default_factory=list)
    rtt_ms: dict[str, float] = Field(default_factory=dict, description="measured round trip to each broker")


class Goodbye(Message):
    """Clean shutdown (or the broker's last will when the agent dies)."""

    device: str
    boot_id: str
    reason: str


# ------------------------------------------------------------------- master <-> agent (MQTT)


class Binding(Message):
    """One end of an edge as a task sees it: the peer task, the channel and its data model."""

    peer: str
    transport: Literal["mqtt"] = "mqtt"
    topic: str
    model: EdgeModel = EdgeModel.stream
    batch: BatchSpec | None = None


class TaskSnapshot(Message):
    """Where a task stood when it stopped to move: the last seq it emitted, the last seq it
    took from each producer (and their ends of stream), and its operator's state."""

    out_seq: int = 0
    hwm: dict[str, int] = Field(default_factory=dict)
    eos: dict[str, int] = Field(default_factory=dict)
    state: Any = None
    taken_at: float = 0.0


class DeployTask(Message):
    kind: Literal["deploy"] = "deploy"
    cmd_id: str
    dataflow: str
    task: str
    generation: int
    operator: str
    config: dict[str, Any] = Field(default_factory=dict)
    resources: Resources = Field(default_factory=Resources)
    inputs: list[Binding] = Field(default_factory=list)
    outputs: list[Binding] = Field(default_factory=list)
    restore: TaskSnapshot | None = Field(default=None, description="continue where a moved copy stopped")


class StopTask(Message):
    kind: Literal["stop"] = "stop"
    cmd_id: str
    dataflow: str
    task: str
    generation: int
    final: bool = Field(
        default=True,
        description="the task is gone for good (its queued input is dropped); false: it moves, "
        "so it drains, snapshots and keeps its queued input for the next copy",
    )


Command = Annotated[DeployTask | StopTask, Field(discriminator="kind")]
COMMAND_ADAPTER: TypeAdapter[DeployTask | StopTask] = TypeAdapter(Command)


class CommandAck(Message):
    cmd_id: str
    device: str
    dataflow: str
    task: str
    generation: int
    ok: bool
    state: TaskState
    reason: str = ""
    snapshot: TaskSnapshot | None = None


class TaskStatus(Message):
    device: str
    dataflow: str
    task: str
    generation: int
    state: TaskState
    reason: str = ""
    records_in: int = 0
    records_out: int = 0
    rate_out: float = Field(default=0.0, description="records/s emitted since the previous report")
    ts: float


# ---------------------------------------------------------------------- data plane (MQTT)


class DataMessage(Message):
    """Records on a channel. ``records`` are ``[seq, payload]`` pairs; the record id is
    ``(producer, seq)`` and ``seq`` grows by one per record a producer emits, so a
    consumer drops duplicates with one high-water mark per producer. ``eos`` marks the
    producer's end of stream after ``last_seq``.

    Encoded on the hot path by ``codec.py`` (orjson) in exactly this shape.
    """

    producer: str
    generation: int
    records: list[tuple[int, Any]] = Field(default_factory=list)
    eos: bool = False
    last_seq: int | None = None


class ChannelProgress(Message):
    """How far a channel's consumer got: every record of ``producer`` up to ``hwm`` is processed.

    Retained on the channel's progress topic; the producer keeps at most its window of
    records beyond it in flight, so the broker's queue for the channel stays bounded. On
    a file edge it also says how much of the file being received arrived
    (``file_seq``, ``file_offset``), which bounds the bytes in flight within a large file.
    """

    consumer: str
    producer: str
    hwm: int
    ts: float
    file_seq: int = 0
    file_offset: int = 0
    eos: bool = Field(default=False, description="the consumer has the producer's end of stream")


class FileChunkHeader(Message):
    """The header of one chunk of a file on a file edge (``codec.encode_chunk`` frames it
    with the raw bytes). Chunks of a file go in order; the last one carries the SHA-256 of
    the whole file, which the receiver checks before it delivers anything."""

    producer: str
    generation: int
    seq: int = Field(description="the file record's id: one seq per file, as for records")
    index: int = Field(description="chunk number within the file, from 0")
    offset: int
    size: int = Field(description="the whole file's size in bytes")
    last: bool
    sha256: str | None = Field(default=None, description="hex digest of the whole file, on the last chunk")
    meta: dict[str, Any] | None = Field(
        default=None, description="the file record without its path, on chunk 0"
    )


class ResendRequest(Message):
    """A consumer asks the producer to send again everything from ``seq`` on (go-back-N):
    it saw a gap (a record, or a file, that never arrived) or a file that failed its check."""

    consumer: str
    producer: str
    seq: int
    reason: str


# --------------------------------------------------------------------- cloud services (NATS)


class ErrorReply(Message):
    error: str
    kind: str = "error"
    problems: list[dict[str, str]] = Field(default_factory=list)


class ValidateRequest(Message):
    spec: DataflowSpec


class ValidateReply(Message):
    ok: bool
    problems: list[dict[str, str]] = Field(default_factory=list)


class Reservation(Message):
    cpu: float = 0.0
    memory_mb: int = 0


class PlaceRequest(Message):
    dataflow: str
    spec: DataflowSpec
    reserved: dict[str, Reservation] = Field(
        default_factory=dict, description="resources already taken on each device by other dataflows"
    )
    rates: dict[str, float] = Field(
        default_factory=dict,
        description="observed records/s out per task (replace the spec's hints once running)",
    )


class PlaceReply(Message):
    ok: bool
    placement: Placement | None = None
    reason: str = ""
    problems: list[dict[str, str]] = Field(default_factory=list)


class DeviceListRequest(Message):
    status: DeviceStatus | None = None


class DeviceListReply(Message):
    devices: list[DeviceRecord]


class DeviceGetRequest(Message):
    device: str


class DeviceGetReply(Message):
    device: DeviceRecord | None = None


class DeviceEvent(Message):
    device: str
    status: DeviceStatus
    previous: DeviceStatus | None = None
    ts: float
    reason: str = ""
    restarted: bool = Field(
        default=False, description="the device's agent is a new process: what ran there is gone"
    )


class DataflowEvent(Message):
    dataflow: str
    state: str
    reason: str = ""
    ts: float


ALL_MESSAGES: tuple[type[Message], ...] = (
    DeviceHello,
    Heartbeat,
    Goodbye,
    TaskSnapshot,
    DeployTask,
    StopTask,
    CommandAck,
    TaskStatus,
    DataMessage,
    ChannelProgress,
    FileChunkHeader,
    ResendRequest,
    ErrorReply,
    ValidateRequest,
    ValidateReply,
    PlaceRequest,
    PlaceReply,
    DeviceListRequest,
    DeviceListReply,
    DeviceGetRequest,
    DeviceGetReply,
    DeviceEvent,
    DataflowEvent,
)


def json_schemas() -> dict[str, Any]:
    """The JSON Schema of every message, keyed by name (the contract that tests pin)."""
    return {m.__name__: m.model_json_schema(by_alias=True) for m in ALL_MESSAGES}
