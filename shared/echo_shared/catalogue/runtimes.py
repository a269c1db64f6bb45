"""Catalogue entries of the runtime operators: ``process``, ``ml.onnx`` and ``container``.

Each entry's ``runtime`` is what placement matches against the runtimes a device offers
(``DeviceInfo.runtimes``), so a task of these operators lands only where it can run, and
what the device's agent checks again before it deploys one. ``process`` and ``container``
run programs of the deployer's choosing: a device offers them only when its agent enables
them (``echo-agent --runtime process``), and runs ``process`` programs confined (an
unprivileged user, resource limits, a minimal environment; ``echo_agent.runtimes.gating``
and ``echo_agent.runtimes.sandbox``). ``onnx`` is offered wherever ONNX Runtime imports.

The process protocol (``process`` and ``container``) has three modes:

- ``lines``: one long-running program; every input record is one JSON line on its stdin,
  every line it prints on stdout is one output record (0..n per input, in any rhythm);
- ``batch``: one run per micro-batch; the batch's records as JSON lines on stdin, the
  run's stdout JSON lines are its output records;
- ``file``: one run per input file, named in the argv by ``{input}``; with ``output`` set,
  the run writes the file ``{output}`` (a file record downstream), else its stdout JSON
  lines are its output records.

Semantics, limits and errors are documented in ``echo_agent.runtimes.stdio``,
``echo_agent.runtimes.onnx_runtime`` and ``echo_agent.runtimes.container_runtime``.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Literal

from pydantic import Field, model_validator

from .base import Kind, OperatorConfig, OperatorInfo, Role, entries

INPUT = "{input}"
OUTPUT = "{output}"


class Mode(StrEnum):
    lines = "lines"
    batch = "batch"
    file = "file"


class StdioConfig(OperatorConfig):
    """What ``process`` and ``container`` share: the mode and how runs are fed and read."""

    mode: Mode = Field(
        default=Mode.lines,
        description="lines: one long-running program, JSON lines in and out; batch: one run per "
        "micro-batch; file: one run per input file ({input} / {output} in the command)",
    )
    env: dict[str, str] = Field(
        default_factory=dict,
        description="environment variables for the program, on top of the minimal environment it "
        "gets (never the agent's)",
    )
    timeout: float | None = Field(
        default=None,
        gt=0,
        le=86_400,
        description="batch/file: seconds one run may take (then it is killed and the task fails); "
        "lines: seconds the program may take to exit once its input ended (default 10)",
    )
    output: str | None = Field(
        default=None,
        min_length=1,
        description="file mode: what {output} becomes, a path pattern relative to a fresh directory "
        "per run (<data dir>/output/<generation>-<run>/) or absolute, with {name}, {stem}, {suffix} "
        "of the input file and {n} (run number), e.g. '{stem}.out.png'; each run must write it, and "
        "it goes downstream as a file. Unset: the run's stdout JSON lines are its output records",
    )
    batch_count: int = Field(
        default=100, ge=1, le=100_000, description="batch mode on a stream edge: records per run"
    )
    batch_seconds: float = Field(
        default=1.0, gt=0, le=3600, description="batch mode on a stream edge: or this long after the first"
    )
    linger: float = Field(
        default=0.0,
        ge=0,
        le=60,
        description="lines mode: seconds to wait after writing a record for the program's first "
        "output line before passing on what arrived (0: never wait; outputs then travel with the "
        "next input, or at the end)",
    )

    def argv_problems(self, argv: list[str], field: str) -> None:
        joined = "\0".join(argv)
        if self.mode is Mode.file:
            if INPUT not in joined:
                raise ValueError(f"file mode needs {INPUT} in {field} (where the input file goes)")
            if self.output is not None and OUTPUT not in joined:
                raise ValueError(f"output is set, so {field} must use {OUTPUT} (where the run writes it)")
            if self.output is None and OUTPUT in joined:
                raise ValueError(f"{field} uses {OUTPUT}: set output (the path pattern it becomes)")
        else:
            if self.output is not None:
                raise ValueError("output applies only to mode: file")
            for token in (INPUT, OUTPUT):
                if token in joined:
                    raise ValueError(f"{token} in {field} applies only to mode: file")


def stdio_kinds(cfg: StdioConfig) -> tuple[Kind, Kind]:
    if cfg.mode is not Mode.file:
        return Kind.records, Kind.records
    return Kind.files, Kind.files if cfg.output is not None else Kind.records


class ProcessConfig(StdioConfig):
    command: list[str] = Field(
        min_length=1,
        description="argv of the program, no shell (write ['sh', '-c', '...'] for one); the first "
        "item is a path or a name looked up on the device's PATH",
    )
    cwd: str | None = Field(
        default=None, min_length=1, description="working directory on the device (default: the task's)"
    )

    @model_validator(mode="after")
    def _placeholders(self) -> ProcessConfig:
        if not self.command[0]:
            raise ValueError("command[0] (the program) is empty")
        self.argv_problems(self.command, "command")
        return self


class ContainerConfig(StdioConfig):
    image: str = Field(min_length=1, max_length=512, description="image reference, e.g. busybox:1.36")
    command: list[str] | None = Field(
        default=None, min_length=1, description="argv run in the container (default: the image's CMD)"
    )
    entrypoint: list[str] | None = Field(default=None, description="overrides the image's ENTRYPOINT")
    workdir: str | None = Field(default=None, min_length=1, description="working directory in the container")
    network: str = Field(
        default="none", min_length=1, description="Docker network mode (default: none, no network at all)"
    )
    pull: Literal["missing", "never", "always"] = Field(
        default="missing", description="pull the image when it is missing (default), never, or always"
    )
    memory_mb: int | None = Field(default=None, ge=4, description="memory limit of the container")
    cpus: float | None = Field(default=None, gt=0, le=1024, description="CPU limit of the container")

    @model_validator(mode="after")
    def _placeholders(self) -> ContainerConfig:
        self.argv_problems([*(self.entrypoint or []), *(self.command or [])], "command")
        return self


class ImageInput(OperatorConfig):
    """How an image file becomes the model's input tensor."""

    tensor: str | None = Field(
        default=None, min_length=1, description="input name (default: the model's first)"
    )
    size: tuple[int, int] | None = Field(
        default=None, description="[width, height] to resize to (default: the model input's fixed shape)"
    )
    layout: Literal["NCHW", "NHWC"] | None = Field(
        default=None, description="tensor layout (default: from the model input's shape)"
    )
    color: Literal["RGB", "BGR", "L"] = Field(default="RGB", description="channel order, or L (grey)")
    scale: float = Field(default=1 / 255, description="pixel values (0..255) are multiplied by this ...")
    mean: list[float] = Field(default_factory=lambda: [0.0], description="... minus mean (per channel) ...")
    std: list[float] = Field(default_factory=lambda: [1.0], description="... divided by std (per channel)")

    @model_validator(mode="after")
    def _sane(self) -> ImageInput:
        channels = 1 if self.color == "L" else 3
        for name, values in (("mean", self.mean), ("std", self.std)):
            if len(values) not in (1, channels):
                raise ValueError(f"{name} needs 1 or {channels} values for color {self.color}")
        if any(s == 0 for s in self.std):
            raise ValueError("std values must not be 0")
        if self.size is not None and min(self.size) < 1:
            raise ValueError("size must be positive [width, height]")
        return self


class OnnxConfig(OperatorConfig):
    model: str = Field(min_length=1, description="path of the .onnx file on the device")
    inputs: dict[str, str] | None = Field(
        default=None,
        min_length=1,
        description="record input: model input name -> record field holding a numeric (nested) list. "
        "Unset: the input is an image file (consumes files)",
    )
    image: ImageInput = Field(default_factory=ImageInput, description="image input: preprocessing")
    outputs: dict[str, str] | None = Field(
        default=None,
        description="model output name -> record field (default: every output under its own name); "
        "an empty mapping adds no tensor (only class/score)",
    )
    labels: list[str] | None = Field(
        default=None,
        min_length=1,
        description="class names: adds 'class' (the label at the argmax of label_output) and 'score'",
    )
    label_output: str | None = Field(
        default=None, min_length=1, description="output the labels index (default: the first output)"
    )
    batch_count: int = Field(
        default=16, ge=1, le=10_000, description="image input: files per inference batch (gathered)"
    )
    batch_seconds: float = Field(
        default=0.5, gt=0, le=3600, description="image input: or this long after the batch's first file"
    )
    threads: int | None = Field(default=None, ge=1, le=256, description="intra-op threads (default: ORT's)")

    @model_validator(mode="after")
    def _sane(self) -> OnnxConfig:
        if self.inputs is not None and "image" in self.model_fields_set:
            raise ValueError("image applies only to image input (leave inputs unset)")
        if self.label_output is not None and self.labels is None:
            raise ValueError("label_output needs labels")
        return self


def onnx_kinds(cfg: OnnxConfig) -> tuple[Kind, Kind]:
    return (Kind.files if cfg.inputs is None else Kind.records), Kind.records


CATALOGUE = entries(
    OperatorInfo(
        "process",
        Role.transform,
        ProcessConfig,
        runtime="process",
        cost=5.0,
        summary="run an external command: JSON lines over stdin/stdout, per batch, or per file",
        kinds=stdio_kinds,
    ),
    OperatorInfo(
        "ml.onnx",
        Role.transform,
        OnnxConfig,
        runtime="onnx",
        cost=5.0,
        summary="ONNX Runtime inference on record fields or image files; outputs (and class/score) added",
        consumes=Kind.files,
        kinds=onnx_kinds,
    ),
    OperatorInfo(
        "container",
        Role.transform,
        ContainerConfig,
        runtime="container",
        cost=5.0,
        summary="run a container image through the Docker engine with the process protocol",
        kinds=stdio_kinds,
    ),
)
