"""Agent settings: environment (prefix ``ECHO_``) overlaid with command-line flags."""

from __future__ import annotations

import pwd
from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator

from echo_shared.models import Link, Tier
from echo_shared.settings import CommonSettings, LivenessSettings, MqttSettings


class AgentSettings(CommonSettings, MqttSettings, LivenessSettings):
    service_name: str = "echo-agent"
    mqtt_url: str | None = Field(  # type: ignore[assignment]
        default=None, description="the MQTT broker (default: from the credentials of the state dir)"
    )
    nats_url: str | None = Field(default=None, description="set when this device can reach NATS")
    state_dir: Path | None = Field(
        default=None,
        description="where the device keeps its identity: credentials.json (0600) and the CA, "
        "written at enrolment (--enrol-token) and reused at every start",
    )
    api_url: str | None = Field(default=None, description="the master's REST API (enrolment)")

    @field_validator("nats_url", mode="before")
    @classmethod
    def _empty_is_none(cls, v: object) -> object:
        return None if v == "" else v

    device_id: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$")
    tier: Tier
    input_streams: list[str] = Field(default_factory=list)
    labels: dict[str, str] = Field(default_factory=dict)
    runtimes: list[Literal["python", "onnx", "process", "container"]] = Field(
        default_factory=list,
        description="runtimes enabled on top of the defaults (python always, onnx when ONNX Runtime "
        "imports): process, container (which also needs a Docker engine); naming a default changes "
        "nothing. See echo_agent.runtimes.gating",
    )
    run_as: str | None = Field(
        default=None,
        min_length=1,
        description="user (name or uid) that external programs (the process runtime) run as; default: "
        "nobody when the agent is root; an agent that is not root runs them as itself",
    )
    process_cpu_seconds: int = Field(
        default=600, ge=0, description="CPU seconds one batch or file run of a program may use (0: no limit)"
    )
    process_lines_cpu_seconds: int = Field(
        default=0,
        ge=0,
        description="CPU seconds a lines-mode program may use over its whole life, which is its "
        "task's (0: no limit)",
    )
    process_max_files: int = Field(default=1024, ge=16, le=1 << 20, description="open files per program")
    process_cpu_window: float = Field(
        default=10.0,
        gt=0,
        description="seconds a program's CPU use is averaged over: above its task's resources.cpu "
        "(with 50 % tolerance) for that long, it is killed and the task fails saying so",
    )
    process_cgroups: bool = Field(
        default=True,
        description="give each program of a process task a cgroup v2 of its own (cpu.max, memory.max "
        "from the task's resources) where the agent can manage them; false, or where it cannot: "
        "rlimits and the CPU watch",
    )
    python_workers: bool = Field(
        default=True,
        description="run user operators (python:pkg.mod:Class) in a worker process each, so one that "
        "spins or crashes cannot stall the agent (false: inside the agent, as before)",
    )

    @field_validator("run_as")
    @classmethod
    def _known_user(cls, v: str | None) -> str | None:
        if v is not None:
            try:
                pwd.getpwuid(int(v)) if v.isdigit() else pwd.getpwnam(v)
            except KeyError:
                raise ValueError(f"no user {v!r} on this machine") from None
        return v

    site: str = Field(default="", description="where the device is")
    brokers: list[str] | None = Field(
        default=None, description="data brokers the device reaches (default: mqtt, and nats if ECHO_NATS_URL)"
    )
    inbound: bool = False
    uplink: Link | None = None
    links: dict[str, Link] = Field(default_factory=dict)
    accelerators: dict[str, int] = Field(default_factory=dict)
    cpu: float | None = Field(default=None, gt=0, description="CPU cores offered (default: all)")
    records_per_s: float | None = Field(
        default=None,
        gt=0,
        description="records/s one core of this agent forwards through a stream task (default: "
        "measured at start, echo_agent.throughput)",
    )
    memory_mb: int | None = Field(default=None, gt=0, description="memory offered (default: all)")
    data_dir: Path = Field(default=Path(".echo/agent-data"), description="task working directories")
    channel_window: int = Field(
        default=10_000, gt=0, description="records a task may emit beyond what its slowest consumer processed"
    )
    trace_records: float = Field(
        default=0.0,
        ge=0.0,
        le=1.0,
        description="the fraction of records traced across devices (0.001: one in a thousand; 0: none)",
    )
    checkpoint_interval: float = Field(
        default=1.0,
        ge=0,
        description="seconds between a running task's checkpoints (what failover restores); 0: none",
    )
    utilisation: Literal["host", "agent"] = Field(
        default="host",
        description="what heartbeats report as load: the whole machine, or this agent and its "
        "children against the device's declared cpu and memory_mb (emulated devices on one host)",
    )
    task_session_expiry: int = Field(
        default=86400,
        gt=0,
        description="seconds the broker keeps the data session (and with per-task sessions, a "
        "task's queued input) while the agent is away",
    )
    spool: bool = Field(
        default=True,
        description="output channels spool to disk (under the data dir) while their broker is out "
        "of reach; false: a cut-off producer waits once its windows are full, as before",
    )
    spool_max_bytes: int = Field(
        default=1 << 30,
        ge=4096,
        description="bytes one output channel's spool may hold (an edge's spool.max_bytes overrides)",
    )
    spool_max_age: float = Field(
        default=86400.0,
        gt=0,
        description="seconds a spooled message is kept at most (an edge's spool.max_age overrides)",
    )
    spool_overflow: Literal["drop_oldest", "block"] = Field(
        default="block",
        description="a full spool drops its oldest unsent messages (counted; the consumer is told) or "
        "blocks the producing task (an edge's spool.overflow overrides)",
    )
    spool_fsync: Literal["always", "checkpoint", "never"] = Field(
        default="checkpoint",
        description="when spools are synced to disk: after every message, before every local "
        "checkpoint, or never (the kernel decides); see docs/reliability.md",
    )
    keep_tasks: bool = Field(
        default=True,
        description="keep the desired tasks and their latest checkpoints on disk, and resume them "
        "at start without waiting for the master",
    )
    data_session: Literal["agent", "task"] = Field(
        default="agent",
        description="MQTT connections for task channels: one per agent, shared by its tasks "
        "(agent), or one per task (task: the earlier behaviour, for comparison)",
    )
