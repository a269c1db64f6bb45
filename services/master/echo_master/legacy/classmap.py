"""Processor classes a user maps to ECHO operators without code changes
(``ECHO_LEGACY_CLASS_MAP``: a JSON or YAML file, read when the master starts).

    com.acme.nifi.TemperatureAlert:     # any package spelling: matched by the simple name
      operator: core.filter
      config: {where: "temperature > ${Threshold}"}
      tier: fog                         # optional: where the task must run

``${Property Name}`` in a config string is replaced by that property of the processor (a
missing one makes the DAG a 422 naming the processor and the property); a string that is
only ``${...}`` may still be coerced by the operator's config (``"2.5"`` for a number). The
operator's role gives the task's kinds (a source takes no input, a sink emits nothing);
its config is checked when a DAG is mapped, like any task's. An entry of the file takes
precedence over a class ECHO maps itself.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from echo_shared.documents import DocumentError, load_document
from echo_shared.errors import EchoError
from echo_shared.models import Tier
from echo_shared.operators import Role, lookup

from .drafts import Built, Draft, Env
from .processors import Builder

PLACEHOLDER = re.compile(r"\$\{([^}]+)\}")


class ClassMapError(EchoError):
    """``ECHO_LEGACY_CLASS_MAP`` cannot be used; the message names the file and the entry."""


class ClassEntry(BaseModel):
    model_config = ConfigDict(extra="forbid")

    operator: str = Field(min_length=1, description="an operator of ECHO's catalogue")
    config: dict[str, Any] = Field(default_factory=dict)
    tier: Tier | None = None


def load_class_map(path: Path) -> dict[str, Builder]:
    """The builders of the classes ``path`` maps, by simple class name."""
    try:
        text = path.read_text()
    except OSError as e:
        raise ClassMapError(f"ECHO_LEGACY_CLASS_MAP {path}: cannot be read ({e.strerror or e})") from e
    try:
        raw = load_document(text)
    except DocumentError as e:
        raise ClassMapError(f"ECHO_LEGACY_CLASS_MAP {path}: not valid JSON or YAML ({e})") from e
    if not isinstance(raw, dict):
        raise ClassMapError(f"ECHO_LEGACY_CLASS_MAP {path}: expected a mapping of class names to entries")
    out: dict[str, Builder] = {}
    spelled: dict[str, str] = {}
    for cls, body in raw.items():
        where = f"ECHO_LEGACY_CLASS_MAP {path}: {cls!r}"
        simple = str(cls).rsplit(".", 1)[-1]
        if not simple:
            raise ClassMapError(f"{where}: not a class name")
        try:
            entry = ClassEntry.model_validate(body)
        except ValidationError as e:
            problems = "; ".join(
                f"{'.'.join(map(str, err['loc'])) or 'entry'}: {err['msg']}" for err in e.errors()
            )
            raise ClassMapError(f"{where}: {problems}") from e
        if lookup(entry.operator) is None:
            raise ClassMapError(f"{where}: no operator {entry.operator!r} in ECHO's catalogue")
        if simple in spelled and raw[spelled[simple]] != body:
            raise ClassMapError(f"{where}: maps {simple} differently from {spelled[simple]!r}")
        spelled[simple] = str(cls)
        out[simple] = _builder(entry)
    return out


def _builder(entry: ClassEntry) -> Builder:
    info = lookup(entry.operator)
    assert info is not None

    def build(env: Env) -> Built:
        config = _filled(entry.config, env)
        consumes, produces = info.kinds_for(config)
        return Built(
            [
                Draft(
                    entry.operator,
                    config,
                    None if info.role is Role.source else consumes,
                    None if info.role is Role.sink else produces,
                    tier=entry.tier,
                )
            ]
        )

    return build


def _filled(value: Any, env: Env) -> Any:
    if isinstance(value, str):
        return PLACEHOLDER.sub(lambda m: env.require(m.group(1)), value)
    if isinstance(value, dict):
        return {k: _filled(v, env) for k, v in value.items()}
    if isinstance(value, list):
        return [_filled(v, env) for v in value]
    return value


__all__ = ["Builder", "ClassMapError", "load_class_map"]
