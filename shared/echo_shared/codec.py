"""Hot-path encoding of data-plane messages with orjson.

Records: pydantic validation per record would cost more than moving it; these functions
produce and accept exactly the JSON shape of ``DataMessage`` (a unit test checks both
ways) and check only what the consumer relies on.

File chunks: a binary frame, ``MAGIC`` + 4-byte big-endian header length + the
``FileChunkHeader`` JSON + the chunk's raw bytes (no base64). A data message starts
with ``{``, a chunk frame with ``MAGIC``, so one channel can tell them apart.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Any

import orjson

from .messages import FileChunkHeader

MAGIC = b"\x00ECF1"
_LEN = struct.Struct(">I")


class BadDataMessage(ValueError):
    pass


@dataclass(slots=True)
class Decoded:
    producer: str
    generation: int
    records: list[list[Any]]
    eos: bool
    last_seq: int | None
    skip_from: int | None = None


def encode_records(producer: str, generation: int, records: list[tuple[int, Any]]) -> bytes:
    return orjson.dumps(
        {"producer": producer, "generation": generation, "records": records, "eos": False, "last_seq": None}
    )


def encode_eos(producer: str, generation: int, last_seq: int) -> bytes:
    return orjson.dumps(
        {"producer": producer, "generation": generation, "records": [], "eos": True, "last_seq": last_seq}
    )


def encode_skip(producer: str, generation: int, first: int, last: int) -> bytes:
    """Records ``first..last`` of ``producer`` were dropped by its spool: the consumer takes
    the gap as filled instead of asking for them again."""
    return orjson.dumps(
        {
            "producer": producer,
            "generation": generation,
            "records": [],
            "eos": False,
            "last_seq": last,
            "skip_from": first,
        }
    )


def restamp(data: bytes, generation: int) -> bytes:
    """A data message sent again by a newer copy of its producer, as that copy's own: a
    consumer that heard the newer generation drops older ones as stale, and would never get
    the records a drained copy left unconfirmed."""
    try:
        obj = orjson.loads(data)
    except orjson.JSONDecodeError as e:
        raise BadDataMessage(f"not a data message: {e}") from e
    if not isinstance(obj, dict) or "generation" not in obj:
        raise BadDataMessage("not a data message: no generation")
    obj["generation"] = generation
    return orjson.dumps(obj)


def decode(data: bytes) -> Decoded:
    try:
        obj = orjson.loads(data)
        return Decoded(
            producer=obj["producer"],
            generation=int(obj["generation"]),
            records=obj["records"],
            eos=bool(obj.get("eos", False)),
            last_seq=obj.get("last_seq"),
            skip_from=obj.get("skip_from"),
        )
    except (orjson.JSONDecodeError, KeyError, TypeError, ValueError) as e:
        raise BadDataMessage(f"not a data message: {e}") from e


def is_chunk(data: bytes) -> bool:
    return data[: len(MAGIC)] == MAGIC


def encode_chunk(header: FileChunkHeader, data: bytes) -> bytes:
    head = header.to_bytes()
    return b"".join((MAGIC, _LEN.pack(len(head)), head, data))


def decode_chunk(frame: bytes) -> tuple[FileChunkHeader, memoryview]:
    """The header and a view of the chunk's bytes (``BadDataMessage`` if malformed)."""
    try:
        if not is_chunk(frame):
            raise ValueError("no chunk magic")
        start = len(MAGIC) + _LEN.size
        (n,) = _LEN.unpack_from(frame, len(MAGIC))
        header = FileChunkHeader.model_validate_json(frame[start : start + n])
        return header, memoryview(frame)[start + n :]
    except (ValueError, struct.error) as e:
        raise BadDataMessage(f"not a file chunk: {e}") from e
