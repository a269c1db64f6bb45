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
    DataflowSpec,
    DeviceInfo,
    DeviceRecord,
    DeviceStatus,
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


class Goodbye(Message):
    """Clean shutdown (or the broker's last will when the agent dies)."""

    device: str
    boot_id: str
    reason: str


# ------------------------------------------------------------------- master <-> agent (MQTT)


class Binding(Message):
    """One end of an edge as a task sees it: the peer task and the channel."""

    peer: str
    transport: Literal["mqtt"] = "mqtt"
    topic: str


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


class StopTask(Message):
    kind: Literal["stop"] = "stop"
    cmd_id: str
    dataflow: str
    task: str
    generation: int


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


class TaskStatus(Message):
    device: str
    dataflow: str
    task: str
    generation: int
    state: TaskState
    reason: str = ""
    records_in: int = 0
    records_out: int = 0
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
    records beyond it in flight, so the broker's queue for the channel stays bounded.
    """

    consumer: str
    producer: str
    hwm: int
    ts: float


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


class DataflowEvent(Message):
    dataflow: str
    state: str
    reason: str = ""
    ts: float


ALL_MESSAGES: tuple[type[Message], ...] = (
    DeviceHello,
    Heartbeat,
    Goodbye,
    DeployTask,
    StopTask,
    CommandAck,
    TaskStatus,
    DataMessage,
    ChannelProgress,
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
