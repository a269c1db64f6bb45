"""The RIoTBench schema files: field names, their units, and how each is carried.

``taxi-schema-without-annotation.csv`` has three comma-separated lines: the field names
(``taxi_identifier,...,total_amount``), their units (``string,...,dollar``) and ``v`` or
``sv`` per field (a number or a string in SenML). Only the first line is required.
"""

from __future__ import annotations

from dataclasses import dataclass

from .errors import DeviceFileError
from .files import read_lines

KINDS = ("v", "sv", "vs", "bv", "vb", "vd")


@dataclass(frozen=True)
class Schema:
    fields: list[str]
    units: list[str | None]
    kinds: list[str | None]


def parse_schema(lines: list[str], *, option: str, path: str, device: str) -> Schema:
    rows = [[c.strip() for c in line.split(",")] for line in lines if line.strip()]
    if not rows:
        raise DeviceFileError(option, path, device, "is empty (expected a line of field names)")
    fields = rows[0]
    if any(not f for f in fields):
        raise DeviceFileError(option, path, device, "has an empty field name on its first line")
    seen: set[str] = set()
    for f in fields:
        if f in seen:
            raise DeviceFileError(option, path, device, f"names field {f!r} twice")
        seen.add(f)
    n = len(fields)
    units: list[str | None] = [None] * n
    kinds: list[str | None] = [None] * n
    for i, label in ((1, "units"), (2, "v/sv")):
        if len(rows) > i:
            if len(rows[i]) != n:
                raise DeviceFileError(
                    option, path, device, f"has {len(rows[i])} {label} on line {i + 1} for {n} fields"
                )
            if i == 1:
                units = [u or None for u in rows[i]]
            else:
                bad = [k for k in rows[i] if k not in KINDS]
                if bad:
                    raise DeviceFileError(
                        option, path, device, f"line 3 must say v or sv per field, not {bad[0]!r}"
                    )
                kinds = list(rows[i])
    return Schema(fields, units, kinds)


async def load_schema(option: str, path: str, device: str) -> Schema:
    lines = await read_lines(option, path, device)
    return parse_schema(lines, option=option, path=path, device=device)
