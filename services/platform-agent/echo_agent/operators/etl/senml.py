"""SenML (RFC 8428, and the draft names the RIoTBench data uses) to records and back.

A line of the RIoTBench taxi feed is ``<timestamp_ms>,<SenML JSON>``::

    1358101800000,{"e":[{"u":"string","n":"taxi_identifier","sv":"1492..."},
                        {"v":"1440","u":"second","n":"trip_time_in_secs"}, ...],"bt":1358101800000}

Values: ``v`` is a number (the data writes it as a string: ``"1440"``; it becomes the
float ``1440.0``), ``sv``/``vs`` a string, ``bv``/``vb`` a boolean, ``vd`` data (a
string). ``bn`` prefixes every name. The message time is ``bt`` (else the line's
timestamp); per-entry ``t`` offsets are not kept (the taxi data has none).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import orjson

STRING_KEYS = ("sv", "vs", "vd")
BOOL_KEYS = ("bv", "vb")


class SenmlError(ValueError):
    """Text that is not a SenML message (the message says what is wrong)."""


@dataclass(frozen=True)
class Entry:
    name: str
    unit: str | None
    value: float | str | bool


@dataclass(frozen=True)
class Message:
    time: float | int | None
    entries: list[Entry]


def _number(raw: Any, name: str) -> float:
    if isinstance(raw, bool):
        raise SenmlError(f"entry {name!r}: v is a boolean, not a number")
    if isinstance(raw, int | float):
        value = float(raw)
    elif isinstance(raw, str):
        try:
            value = float(raw)
        except ValueError:
            raise SenmlError(f"entry {name!r}: v {raw!r} is not a number") from None
    else:
        raise SenmlError(f"entry {name!r}: v {raw!r} is not a number")
    if not math.isfinite(value):
        raise SenmlError(f"entry {name!r}: v {raw!r} is not a finite number")
    return value


def _entry(raw: Any, index: int, base_name: str) -> Entry:
    if not isinstance(raw, dict):
        raise SenmlError(f"e[{index}] is not an object")
    name = raw.get("n", "")
    if not isinstance(name, str):
        raise SenmlError(f"e[{index}].n is not a string")
    name = base_name + name
    if not name:
        raise SenmlError(f"e[{index}] has no name (n) and there is no base name (bn)")
    unit = raw.get("u")
    unit = unit if isinstance(unit, str) else None
    if "v" in raw:
        return Entry(name, unit, _number(raw["v"], name))
    for key in STRING_KEYS:
        if key in raw:
            return Entry(name, unit, str(raw[key]))
    for key in BOOL_KEYS:
        if key in raw:
            if not isinstance(raw[key], bool):
                raise SenmlError(f"entry {name!r}: {key} {raw[key]!r} is not a boolean")
            return Entry(name, unit, raw[key])
    raise SenmlError(f"entry {name!r} has no value (v, sv, vs, bv, vb or vd)")


def parse_line(line: str) -> Message:
    """``<timestamp_ms>,<SenML JSON>`` (or the JSON alone) -> a ``Message``."""
    text = line.strip()
    prefix_time: int | None = None
    if not text.startswith(("{", "[")):
        head, sep, rest = text.partition(",")
        if not sep:
            raise SenmlError("expected '<timestamp_ms>,<SenML JSON>'")
        try:
            prefix_time = int(head)
        except ValueError:
            raise SenmlError(f"timestamp {head[:40]!r} before the first comma is not an integer") from None
        text = rest
    try:
        doc = orjson.loads(text)
    except orjson.JSONDecodeError as e:
        raise SenmlError(f"not JSON: {e}") from None
    if isinstance(doc, list):  # RFC 8428 form: a pack of records, base fields in the first
        if not doc or not all(isinstance(r, dict) for r in doc):
            raise SenmlError("a SenML pack must be a non-empty array of objects")
        base: dict[str, Any] = doc[0]
        raw_entries: Any = doc
    elif isinstance(doc, dict):
        base = doc
        raw_entries = doc.get("e")
        if not isinstance(raw_entries, list):
            raise SenmlError("the SenML object has no 'e' array")
    else:
        raise SenmlError("the SenML document is neither an object nor an array")
    base_name = base.get("bn", "")
    if not isinstance(base_name, str):
        raise SenmlError("bn is not a string")
    bt = base.get("bt")
    time: float | int | None = prefix_time
    if bt is not None:
        if isinstance(bt, bool) or not isinstance(bt, int | float | str):
            raise SenmlError(f"bt {bt!r} is not a number")
        try:
            time = int(bt) if isinstance(bt, int) else _time(bt)
        except ValueError:
            raise SenmlError(f"bt {bt!r} is not a number") from None
    entries = [_entry(r, i, base_name) for i, r in enumerate(raw_entries)]
    return Message(time, entries)


def _time(raw: float | str) -> float | int:
    value = float(raw)
    if not math.isfinite(value):
        raise ValueError(raw)
    return int(value) if value.is_integer() else value


def dumps(time: Any, entries: list[dict[str, Any]]) -> str:
    """A SenML JSON string in the layout of the RIoTBench data: ``{"e": [...], "bt": t}``."""
    doc: dict[str, Any] = {"e": entries}
    if time is not None:
        doc["bt"] = time
    return orjson.dumps(doc).decode()
