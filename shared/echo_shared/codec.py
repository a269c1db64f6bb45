"""Hot-path encoding of data-plane messages (``messages.DataMessage``) with orjson.

Pydantic validation per record would cost more than moving it; these functions produce
and accept exactly the JSON shape of ``DataMessage`` (a unit test checks both ways)
and check only what the consumer relies on.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import orjson


class BadDataMessage(ValueError):
    pass


@dataclass(slots=True)
class Decoded:
    producer: str
    generation: int
    records: list[list[Any]]
    eos: bool
    last_seq: int | None


def encode_records(producer: str, generation: int, records: list[tuple[int, Any]]) -> bytes:
    return orjson.dumps(
        {"producer": producer, "generation": generation, "records": records, "eos": False, "last_seq": None}
    )


def encode_eos(producer: str, generation: int, last_seq: int) -> bytes:
    return orjson.dumps(
        {"producer": producer, "generation": generation, "records": [], "eos": True, "last_seq": last_seq}
    )


def decode(data: bytes) -> Decoded:
    try:
        obj = orjson.loads(data)
        return Decoded(
            producer=obj["producer"],
            generation=int(obj["generation"]),
            records=obj["records"],
            eos=bool(obj.get("eos", False)),
            last_seq=obj.get("last_seq"),
        )
    except (orjson.JSONDecodeError, KeyError, TypeError, ValueError) as e:
        raise BadDataMessage(f"not a data message: {e}") from e
