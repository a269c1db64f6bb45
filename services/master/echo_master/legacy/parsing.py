"""Reading a DAG in the original ECHO submission format (the ``POST /DAG`` body), leniently.

The original master parsed with Jackson and ``ALLOW_COMMENTS``; its sample DAGs also carry
trailing commas and, in ``TFDAG.json``, a broken quote (``{"name": "success, "autoTerminate":
true}``). The body is read as strict JSON first; if that fails it is repaired with
``json_repair`` (comments, trailing commas, missing quotes) and every repair is kept as a
note. What comes out is then checked against the shape below, and every problem is
reported at once with its location (``processors[3].class``) as a ``SpecError`` (422).

Shape (``DagDocument``)::

    processors[]: name, class (a NiFi class name), uuid, relationships [{name, autoTerminate}],
                  properties (a list of one-key objects; an object is accepted too),
                  config (a list of one-key objects, e.g. [{"schedulingPeriod": "30 sec"}]),
                  isInput, sourceUuid
    wiring[]:     sourceProcessor, destinationProcessor, selectedRelationships
    inputstreams: [stream names], QOS: 0 | 1 | 2

Unknown fields are ignored (the original did) but reported as notes. Numbers where the
original had strings (``"uuid": 3``) are accepted.
"""

from __future__ import annotations

from typing import Annotated, Any

import json_repair
import orjson
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError, field_validator

from echo_shared.errors import Problem, SpecError
from echo_shared.operators import join_loc


def _scalar_to_str(v: Any) -> Any:
    """``3`` -> ``"3"``, ``true`` -> ``"true"`` (the original's values are strings)."""
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int | float):
        return str(v)
    return v


Text = Annotated[str, BeforeValidator(_scalar_to_str)]
Ident = Annotated[str, BeforeValidator(_scalar_to_str), Field(min_length=1, max_length=256)]


class _Lenient(BaseModel):
    """Unknown fields are kept aside (``model_extra``) and reported as notes."""

    model_config = ConfigDict(extra="allow", populate_by_name=True)


class RelationshipDoc(_Lenient):
    name: Ident
    autoTerminate: bool = False


class ProcessorDoc(_Lenient):
    name: Text = ""
    class_: Ident = Field(alias="class")
    uuid: Ident
    relationships: list[RelationshipDoc] = Field(default_factory=list)
    properties: dict[str, Text | None] = Field(default_factory=dict)
    config: dict[str, Text | None] = Field(default_factory=dict)
    isInput: bool = False
    sourceUuid: Ident | None = None

    @field_validator("properties", "config", mode="before")
    @classmethod
    def _one_key_objects(cls, v: Any) -> Any:
        """``[{"a": "1"}, {"b": null}]`` -> ``{"a": "1", "b": None}`` (a plain object passes)."""
        if v is None:
            return {}
        if isinstance(v, list):
            merged: dict[str, Any] = {}
            for i, item in enumerate(v):
                if not isinstance(item, dict):
                    raise ValueError(f'item {i} is not an object: expected {{"<name>": <value>}}')
                merged.update(item)
            return merged
        return v

    @property
    def simple_class(self) -> str:
        """``org.apache.nifi.processors.standard.GetFile`` -> ``GetFile``."""
        return self.class_.rsplit(".", 1)[-1].strip()

    @property
    def label(self) -> str:
        """How problems name this processor: ``'GetFile' (uuid 0)``."""
        return f"{self.name or self.simple_class!r} (uuid {self.uuid})"

    def relationship(self, name: str) -> RelationshipDoc | None:
        for r in self.relationships:
            if r.name == name:
                return r
        return None


class WireDoc(_Lenient):
    sourceProcessor: Ident
    destinationProcessor: Ident
    selectedRelationships: list[Text] = Field(default_factory=list)

    @field_validator("selectedRelationships", mode="before")
    @classmethod
    def _one_or_many(cls, v: Any) -> Any:
        if v is None:
            return []
        return [v] if isinstance(v, str) else v


class DagDocument(_Lenient):
    processors: list[ProcessorDoc] = Field(min_length=1)
    wiring: list[WireDoc] = Field(default_factory=list)
    inputstreams: list[Text] = Field(default_factory=list)
    QOS: int | None = Field(default=None, ge=0, le=2, description="MQTT quality of service asked for")

    @field_validator("wiring", "inputstreams", mode="before")
    @classmethod
    def _null_is_empty(cls, v: Any) -> Any:
        return [] if v is None else v


# ---------------------------------------------------------------------------------- reading


def load_json(body: bytes) -> tuple[Any, list[str]]:
    """Strict JSON, else repaired JSON; returns the value and a note per repair."""
    try:
        text = body.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise SpecError([Problem("body", f"the body is not UTF-8 text (byte {e.start})", "encoding")]) from e
    if not text.strip():
        raise SpecError([Problem("body", "the body is empty: expected a DAG", "empty")])
    try:
        return orjson.loads(text), []
    except orjson.JSONDecodeError as e:
        strict_error = f"line {e.lineno}, column {e.colno}: {e.msg}"
    try:
        repaired = json_repair.loads(text, logging=True)
    except Exception as e:  # the repairer gave up: report the strict parser's complaint
        raise SpecError([Problem("body", f"invalid JSON at {strict_error}", "json")]) from e
    value, log = repaired if isinstance(repaired, tuple) else (repaired, [])
    if not isinstance(value, dict):
        raise SpecError(
            [
                Problem(
                    "body",
                    f"not a DAG: expected a JSON object with processors and wiring "
                    f"(invalid JSON at {strict_error})",
                    "json",
                )
            ]
        )
    notes = [
        f"repaired JSON: {entry.get('text', '')} near {entry.get('context', '')!r}"
        for entry in log
        if isinstance(entry, dict)
    ]
    return value, notes or [f"repaired JSON (invalid at {strict_error})"]


def read_dag(body: bytes) -> tuple[DagDocument, list[str]]:
    """Parse a ``POST /DAG`` body; returns the document and notes (repairs, ignored fields)."""
    data, notes = load_json(body)
    if not isinstance(data, dict):
        kind = type(data).__name__ if data is not None else "null"
        raise SpecError([Problem("body", f"expected a DAG (a JSON object), got {kind}", "type")])
    try:
        dag = DagDocument.model_validate(data)
    except ValidationError as e:
        raise SpecError(
            [Problem(join_loc("", err["loc"]) or "body", err["msg"], err["type"]) for err in e.errors()]
        ) from e
    return dag, notes + ignored_fields(dag)


def ignored_fields(dag: DagDocument) -> list[str]:
    notes = [f"ignored unknown field {k!r}" for k in dag.model_extra or {}]
    for i, p in enumerate(dag.processors):
        notes += [f"processors[{i}]: ignored unknown field {k!r}" for k in p.model_extra or {}]
        for j, r in enumerate(p.relationships):
            notes += [
                f"processors[{i}].relationships[{j}]: ignored unknown field {k!r}"
                for k in r.model_extra or {}
            ]
    for i, w in enumerate(dag.wiring):
        notes += [f"wiring[{i}]: ignored unknown field {k!r}" for k in w.model_extra or {}]
    return notes
