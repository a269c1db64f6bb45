"""What a processor builder works with: the task drafts it returns and its view of the
processor (``Env``: properties read with located problems, notes)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from echo_shared.errors import Problem
from echo_shared.models import Tier
from echo_shared.operators import Kind

from .nifi import parse_duration
from .parsing import ProcessorDoc


@dataclass
class Draft:
    """One task of a processor's chain (its id is the processor's base id + suffix)."""

    operator: str
    config: dict[str, Any]
    consumes: Kind | None  # None: a source
    produces: Kind | None  # None: a sink
    suffix: str = ""
    tier: Tier | None = None


@dataclass
class Built:
    drafts: list[Draft]  # empty: the processor has no task, its successors get its input
    batch_count: int | None = None  # records per micro-batch on its record inputs
    batch_seconds: float | None = None


@dataclass
class Env:
    """What a builder sees of its processor and reports to."""

    index: int
    doc: ProcessorDoc
    base_id: str
    inputs: set[Kind]
    successors: list[str]
    predecessors: list[str] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    used: set[str] = field(default_factory=set)

    @property
    def cls(self) -> str:
        return self.doc.simple_class

    def loc(self, prop: str) -> str:
        return f"processors[{self.index}].properties.{prop}"

    def note(self, msg: str) -> None:
        self.notes.append(f"processors[{self.index}] {self.doc.label}: {msg}")

    def problem(self, loc: str, msg: str, kind: str = "value_error") -> None:
        self.problems.append(Problem(loc, f"{self.doc.label}: {msg}", kind))

    def prop(self, name: str) -> str | None:
        """A property's value; None when absent, null or blank."""
        self.used.add(name)
        value = self.doc.properties.get(name)
        return value if value is not None and value.strip() else None

    def require(self, name: str) -> str:
        value = self.prop(name)
        if value is None:
            self.problem(self.loc(name), f"{self.cls} needs the property {name!r}", "missing")
            return ""
        return value

    def flag(self, name: str, default: bool) -> bool:
        value = self.prop(name)
        if value is None:
            return default
        if value.strip().lower() in ("true", "false"):
            return value.strip().lower() == "true"
        self.problem(self.loc(name), f"expected true or false, got {value!r}")
        return default

    def integer(self, name: str, low: int = 0) -> int | None:
        value = self.prop(name)
        if value is None:
            return None
        try:
            n = int(value.strip())
        except ValueError:
            n = low - 1
        if n < low:
            self.problem(self.loc(name), f"expected a whole number >= {low}, got {value!r}")
            return None
        return n

    def duration(self, name: str, loc: str | None = None, value: str | None = None) -> float | None:
        text = self.prop(name) if value is None else value
        if text is None:
            return None
        try:
            return parse_duration(text)
        except ValueError as e:
            self.problem(loc or self.loc(name), str(e))
            return None

    def scheduling_period(self) -> float | None:
        value = self.doc.config.get("schedulingPeriod")
        if value is None or not value.strip():
            return None
        return self.duration("schedulingPeriod", f"processors[{self.index}].config.schedulingPeriod", value)
