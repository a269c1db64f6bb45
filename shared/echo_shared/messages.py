"""Every message that crosses NATS or MQTT, as a pydantic model (``extra="forbid"``).

``tests/unit/test_message_schemas.py`` fails when the JSON Schemas exported from this
module drift from the committed copy in ``schemas/messages.json``
(regenerate with ``make schemas`` after an intended change).

Trace context never sits in a body: it travels in NATS headers and MQTT 5 user
properties (see ``telemetry.py``).
"""

from __future__ import annotations

from typing import Annotated, Any, ClassVar, Literal, Self

import orjson
from pydantic import BaseModel, ConfigDict, Field, TypeAdapter

from .models import (
    BatchSpec,
    ChannelCounts,
    DataflowSpec,
    DeviceInfo,
    DeviceRecord,
    DeviceStatus,
    EdgeModel,
    Placement,
    Resources,
    SpoolSpec,
    TaskState,
)


class Message(BaseModel):
    model_config = ConfigDict(extra="forbid")
    # fields added after a message was first deployed: left out while at their default, so
    # a peer of the version before (which refuses fields it does not know) still reads it
    newer_fields: ClassVar[frozenset[str]] = frozenset()

    def to_bytes(self) -> bytes:
        unset = self.newer_unset()
        if unset:
            return self.model_dump_json(by_alias=True, exclude=unset).encode()
        return self.model_dump_json(by_alias=True).encode()

    def newer_unset(self) -> set[str]:
        """The newer fields at their defaults: left out of the message."""
        return {f for f in self.newer_fields if getattr(self, f) == type(self).model_fields[f].default}

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
    spool: SpoolSpec | None = None
    generation: int | None = Field(
        default=None,
        description="inputs: the producer's generation the master assigned; a consumer accepts no "
        "newer one until the master says so (it never learns a generation from traffic)",
    )


class TaskSnapshot(Message):
    """Where a task stood when it stopped to move: the last seq it emitted, the last seq it
    took from each producer (and their ends of stream), and its operator's state."""

    out_seq: int = 0
    hwm: dict[str, int] = Field(default_factory=dict)
    eos: dict[str, int] = Field(default_factory=dict)
    state: Any = None
    taken_at: float = 0.0
    kind: Literal["drain", "checkpoint"] = Field(
        default="checkpoint",
        description="drain: taken by a copy that stopped to move, complete (its input after hwm is "
        "still queued in its channels); checkpoint: periodic, its producers replay what came after",
    )
    tail: dict[str, list[tuple[int, str]]] = Field(
        default_factory=dict,
        description="drain: per output channel, the messages published and not yet confirmed by the "
        "consumer ((last seq, base64 payload)): the next copy keeps them to send again if asked",
    )


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
    newer_fields = frozenset({"delta_from"})

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
    fence: bool = Field(
        default=False,
        description="a stale copy (a newer generation runs elsewhere): stop at once, no drain, and "
        "leave the channels' sessions, positions and progress reports alone (they are the newer copy's)",
    )
    delta_from: float | None = Field(
        default=None,
        description="a move whose target holds this checkpoint's state staged (the taken_at that names "
        "it): the drained snapshot's state may be only the changes since it (echo_shared.statedelta)",
    )


class StageState(Message):
    """A moving task's latest checkpointed state, sent ahead to its target (master -> agent).

    The target holds it (``name``, a while) for the task's next copy, whose restore then
    carries only the changes since it: the state's bulk travels while the task still runs
    (a move's pre-copy). Answered with a ``CommandAck`` (state ``pending``)."""

    kind: Literal["stage"] = "stage"
    cmd_id: str
    dataflow: str
    task: str
    generation: int = Field(description="the generation of the copy that will restore it")
    name: str = Field(description="the state's object in the object store, which names it")
    state: Any = None
    delta: Any = Field(
        default=None,
        description="changes to apply to state on arrival (the object was an incremental checkpoint)",
    )


class LoginAhead(Message):
    """A deployment wave's NATS channels are granted to the device (master -> agent, on its
    command topic, before the wave's commands; no answer).

    NATS fixes a connection's permissions at login, so a login the agent begins on receipt
    carries the channels of every deploy command named here (the master sends this once
    their grants are stored), and their tasks share it: the login overlaps the rest of the
    wave's preparation instead of following each command. (An agent of the version before
    drops it as an unknown command, with a warning.)"""

    kind: Literal["login_ahead"] = "login_ahead"
    wave: str = Field(max_length=64, description="names the wave (logs)")
    commands: list[Annotated[str, Field(max_length=64)]] = Field(
        max_length=10_000, description="the cmd_id of each deploy of the wave to this device"
    )


class CheckpointStored(Message):
    """The master kept a task's checkpoint (master -> agent, on the device's command topic).

    Only then does the task report progress up to it: a failover restores the latest
    checkpoint the master kept, so producers must keep everything after that one. (The
    broker's acknowledgement is not enough: a checkpoint the master could not store, or
    has not stored yet, would leave records that neither the restored copy nor any
    producer holds.) No answer is sent."""

    newer_fields = frozenset({"kept", "base"})

    kind: Literal["checkpoint_stored"] = "checkpoint_stored"
    dataflow: str
    task: str
    generation: int
    taken_at: float = Field(description="the checkpoint's snapshot.taken_at, which names it")
    kept: bool = Field(
        default=True,
        description="false: not kept (an incremental checkpoint whose base is not the latest whole "
        "checkpoint the master kept, or a state the object store could not take): the agent sends "
        "the next one whole",
    )
    base: bool = Field(
        default=False,
        description="a whole checkpoint kept as an object of its own: incremental checkpoints may build "
        "on it (the agent sends none otherwise; a master that says nothing of it takes none)",
    )


class RotateCredentials(Message):
    """New broker credentials for the device (master -> agent, on its private command topic).

    The agent saves them (``credentials.json``, 0600), uses them from its next (re)connect on,
    and answers with a ``CredentialsAck``; the old ones stop working after a grace period.
    """

    kind: Literal["credentials"] = "credentials"
    cmd_id: str
    device: str
    username: str
    password: str = Field(repr=False)
    nats_username: str | None = None
    nats_password: str | None = Field(default=None, repr=False)


# task commands; ``RotateCredentials`` shares the command topic but not the task path
Command = Annotated[DeployTask | StopTask | StageState, Field(discriminator="kind")]
COMMAND_ADAPTER: TypeAdapter[DeployTask | StopTask | StageState] = TypeAdapter(Command)


class CredentialsAck(Message):
    """The agent's answer to ``RotateCredentials`` (on its ack topic)."""

    kind: Literal["credentials"] = "credentials"
    cmd_id: str
    device: str
    ok: bool
    reason: str = ""


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

    @classmethod
    def answering(
        cls,
        cmd: DeployTask | StopTask | StageState,
        device: str,
        ok: bool,
        state: TaskState,
        reason: str = "",
    ) -> CommandAck:
        """The answer to ``cmd`` from ``device``."""
        return cls(
            cmd_id=cmd.cmd_id,
            device=device,
            dataflow=cmd.dataflow,
            task=cmd.task,
            generation=cmd.generation,
            ok=ok,
            state=state,
            reason=reason,
        )


class TaskCheckpoint(Message):
    """A running task's periodic checkpoint (agent -> master, MQTT): what failover restores.

    Taken between two records, so ``snapshot`` is consistent: the operator's state after
    every record up to ``snapshot.hwm`` and nothing after it. The task reports progress
    to its producers only up to the hwm of its latest checkpoint, so they keep what came
    after it and can replay it to a copy restored from this checkpoint."""

    device: str
    dataflow: str
    task: str
    generation: int
    snapshot: TaskSnapshot
    ts: float


def state_bytes(msg: TaskCheckpoint | DeployTask) -> bytes:
    """``msg.to_bytes()``, its snapshot's operator state serialised by orjson: pydantic walks
    an ``Any`` state value by value (0.16 s for 100 MB of counts; orjson 0.04 s). The same
    JSON; pydantic's when orjson cannot take the state."""
    field = "snapshot" if isinstance(msg, TaskCheckpoint) else "restore"
    snap = getattr(msg, field)
    if snap is None or snap.state is None:
        return msg.to_bytes()
    try:
        state = orjson.Fragment(orjson.dumps(snap.state, option=orjson.OPT_NON_STR_KEYS))
    except TypeError:
        return msg.to_bytes()
    exclude: dict[str, Any] = {f: True for f in msg.newer_unset()}
    exclude[field] = {"state"}
    head = msg.model_dump(mode="json", by_alias=True, exclude=exclude)
    head[field]["state"] = state
    return orjson.dumps(head)


SPLICE = "\u0000echo-state\u0000"  # where a state's pieces go (a string no state JSON holds)


def spliced(head: dict[str, Any], state: list[bytes]) -> list[bytes]:
    """``head`` (a message as JSON data, ``SPLICE`` where its state goes) as JSON pieces,
    the state's JSON given in pieces: the bulk is never copied into one buffer."""
    raw = orjson.dumps(head)
    marker = orjson.dumps(SPLICE)
    at = raw.index(marker)
    return [raw[:at], *state, raw[at + len(marker) :]]


def state_pieces(msg: TaskCheckpoint | DeployTask, state: list[bytes]) -> list[bytes]:
    """``msg`` as JSON pieces, its snapshot's (or restore's) state given as ``state`` (its
    JSON in pieces, e.g. ``stateslices.dump_pieces``)."""
    field = "snapshot" if isinstance(msg, TaskCheckpoint) else "restore"
    exclude: dict[str, Any] = {f: True for f in msg.newer_unset()}
    exclude[field] = {"state"}
    head = msg.model_dump(mode="json", by_alias=True, exclude=exclude)
    head[field]["state"] = SPLICE
    return spliced(head, state)


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
    out_seq: int = Field(default=0, description="the last seq it emitted (a position that survives moves)")
    hwm: dict[str, int] = Field(
        default_factory=dict, description="the last seq taken from each producer (its input position)"
    )
    channels: dict[str, ChannelCounts] = Field(
        default_factory=dict, description="per consuming task: what this task sent it (its output edges)"
    )
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
    skip_from: int | None = Field(
        default=None,
        description="with no records: the producer's spool dropped records skip_from..last_seq "
        "(full, or too old); the consumer takes the gap as filled",
    )


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
    generation: int = Field(
        default=0,
        description="the consumer copy's generation: a report from an older copy is ignored",
    )
    replay: bool = Field(
        default=True,
        description="a newer copy that needs everything after its hwm sent again (restored from a "
        "checkpoint, or started afresh); false for a copy that continues a drained one",
    )
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
    pinned: dict[str, str] = Field(
        default_factory=dict, description="tasks kept on these devices (a migration moves only some)"
    )
    avoid: dict[str, list[str]] = Field(
        default_factory=dict, description="devices a task must not go to (the one it leaves)"
    )
    neighbourhood: bool = Field(
        default=False,
        description=(
            "place the tasks not pinned on their neighbourhood alone (their producers, consumers and"
            " anti-affinity partners where they run; what every other task holds reserved): what a"
            " migration asks, at the cost of the neighbours, not of the dataflow; the placement"
            " answered holds those tasks only"
        ),
    )


class PlaceReply(Message):
    ok: bool
    placement: Placement | None = None
    reason: str = ""
    problems: list[dict[str, str]] = Field(default_factory=list)


DEVICE_PAGE = 500  # device records per reply: 500 x ~0.6 KB, far below NATS' 1 MB message limit


class DeviceListRequest(Message):
    """A page of the device list, in id order (``registry_client.list_devices`` reads them all)."""

    status: DeviceStatus | None = None
    after: str = Field(default="", description="the page starts after this device id ('' = first)")
    limit: int = Field(default=DEVICE_PAGE, ge=1, le=5 * DEVICE_PAGE)


class DeviceListReply(Message):
    devices: list[DeviceRecord]
    next_after: str = Field(default="", description="ask again with after=this for the next page ('': done)")


class DeviceGetRequest(Message):
    device: str


class DeviceGetReply(Message):
    device: DeviceRecord | None = None


class DeviceRevokeRequest(Message):
    """The master revoked a device's identity (master -> registry): mark it ``revoked``."""

    device: str
    reason: str = "revoked by an administrator"


class DeviceRevokeReply(Message):
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


# -------------------------------------------------------------- migrations (NATS)

MigrationOrigin = Literal["api", "rebalance", "failover", "overload", "legacy"]
MigrationState = Literal["pending", "running", "completed", "failed", "rolled_back"]
StepState = Literal["pending", "running", "done", "failed", "skipped"]


class MigrationStep(Message):
    name: str
    state: StepState = "pending"
    started_at: float = 0.0
    ended_at: float = 0.0
    ms: float | None = None
    detail: str = ""


class Migration(Message):
    """One task's move, as a saga the migrator persists in Redis (``names.migration_key``)."""

    id: str
    dataflow: str
    task: str
    origin: MigrationOrigin = "api"
    reason: str = ""
    requested_device: str | None = None
    source: str | None = None
    target: str | None = None
    state: MigrationState = "pending"
    generation_from: int = 0
    generation_to: int = 0
    created_at: float = 0.0
    updated_at: float = 0.0
    error: str = ""
    steps: list[MigrationStep] = Field(default_factory=list)
    trace_id: str | None = Field(default=None, description="the trace of the move (each saga step a span)")


class MigrateRequest(Message):
    dataflow: str
    task: str
    device: str | None = Field(default=None, description="the target; none: the scheduler chooses")
    origin: MigrationOrigin = "api"
    reason: str = ""


class MigrateReply(Message):
    ok: bool
    migration: str | None = None
    status: int = Field(default=202, description="an HTTP status for the gateway")
    reason: str = ""


class RebalanceRequest(Message):
    dataflow: str
    origin: MigrationOrigin = "rebalance"
    reason: str = ""


class RebalanceReply(Message):
    ok: bool
    migrations: list[str] = Field(default_factory=list)
    moves: dict[str, str] = Field(default_factory=dict, description="task -> target device")
    status: int = 202
    reason: str = ""


class MigrationGetRequest(Message):
    id: str


class MigrationGetReply(Message):
    ok: bool
    migration: Migration | None = None
    reason: str = ""


class MigrationListRequest(Message):
    dataflow: str | None = None
    limit: int = 100


class MigrationListReply(Message):
    migrations: list[Migration] = Field(default_factory=list)


class RebalanceDecision(Message):
    """What the rebalancer concluded about an overloaded device, and why."""

    ts: float
    device: str
    metric: str
    value: float
    threshold: float
    action: Literal["migrate", "none"]
    reason: str
    task: str | None = None
    dataflow: str | None = None
    migration: str | None = None
    trace_id: str | None = Field(default=None, description="the decision's trace (the move it starts inside)")


class DecisionListRequest(Message):
    limit: int = 100


class DecisionListReply(Message):
    decisions: list[RebalanceDecision] = Field(default_factory=list)


class MoveTaskRequest(Message):
    """Migrator -> master: one step of a migration on the task record the master owns.

    ``drain``: stop the running copy (it finishes in-flight records and snapshots), record
    the snapshot and the target with the next generation, deploy there. ``failover``: the
    source is gone: restore from the latest periodic checkpoint on the target.
    ``rollback``: the target did not come up: back to ``target`` (the source) with the
    same snapshot. Idempotent: a request whose move already happened (the task is at
    ``expected_generation + 1`` on ``target``) succeeds again without doing anything."""

    dataflow: str
    task: str
    target: str
    expected_generation: int
    migration: str
    mode: Literal["drain", "failover", "rollback"] = "drain"
    reason: str = ""


class MoveTaskReply(Message):
    ok: bool
    status: int = 200
    reason: str = ""
    source: str | None = None
    generation: int = 0
    drain_ms: float = 0.0
    restored_from: str = Field(default="", description="drain snapshot, checkpoint, or nothing")


class TaskLocation(Message):
    dataflow: str
    task: str
    operator: str
    device: str | None
    state: TaskState
    generation: int
    stateful: bool = False
    rate_out: float = 0.0
    updated_at: float = 0.0
    brokers: list[str] = Field(default_factory=list, description="brokers its channels use (mqtt, nats)")
    lag: int = Field(default=0, description="records its producers emitted that it has not taken yet")


class TaskListRequest(Message):
    dataflow: str | None = None
    device: str | None = None


class TaskListReply(Message):
    tasks: list[TaskLocation] = Field(default_factory=list)
    specs: dict[str, DataflowSpec] = Field(
        default_factory=dict, description="the spec of each dataflow asked for by id"
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
    StageState,
    LoginAhead,
    CheckpointStored,
    CommandAck,
    TaskCheckpoint,
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
    Migration,
    MigrateRequest,
    MigrateReply,
    RebalanceRequest,
    RebalanceReply,
    MigrationGetRequest,
    MigrationGetReply,
    MigrationListRequest,
    MigrationListReply,
    RebalanceDecision,
    DecisionListRequest,
    DecisionListReply,
    MoveTaskRequest,
    MoveTaskReply,
    TaskListRequest,
    TaskListReply,
    DataflowEvent,
)


def json_schemas() -> dict[str, Any]:
    """The JSON Schema of every message, keyed by name (the contract that tests pin)."""
    return {m.__name__: m.model_json_schema(by_alias=True) for m in ALL_MESSAGES}
