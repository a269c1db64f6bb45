"""A large operator state as JSON in slices: written and read a slice at a time.

Writing or reading 1 GB of state as one JSON document holds the event loop for seconds
(orjson: ~3 s each way for 1 GB on a small machine), and an agent whose loop stops that
long misses its broker's keepalive and its heartbeats: it is taken for gone. So a state
whose objects hold more than ``SLICE_OVER`` entries is written as a list of
``statedelta`` deltas that, applied in order to an empty object, give the state::

    {"$slices":[
    {"set":{"next":17}},
    {"merge":{"counts":{"k1":4, ... about 4 MiB of entries}}},
    {"merge":{"counts":{ ... }}}
    ]}

It is valid JSON, so every reader of the version before takes it as the state
``{"$slices": [...]}`` and ``assemble`` turns it into the state; but each slice stands on
a line of its own (orjson never writes a raw newline: one inside a string is escaped), so
a reader that knows finds the slices in a message without parsing around them (``find``),
and parses them one by one, letting the loop run between them (``load``). The master keeps
such a state as it came, without parsing it (its checkpoints' objects), and sends it on so.
"""

from __future__ import annotations

import asyncio
import io
import itertools
from collections.abc import Iterator
from typing import Any

import orjson

from . import statedelta

SLICED = "$slices"
SLICE_BYTES = 4 * 2**20  # about this much JSON per slice (~20-40 ms to write or read)
FIRST_ENTRIES = 2_000  # entries in a field's first slice, which measures how large they are
SLICE_OVER = 200_000  # a state whose object fields hold more entries than this goes in slices
EDGE_BYTES = 65_536  # a message's first and last chunks hold its head and tail whole, if this long
MARK = b'{"' + SLICED.encode() + b'":[\n'
END = b"\n]}"
_OPTS = orjson.OPT_NON_STR_KEYS


class SliceError(ValueError):
    """A state in slices that cannot be read (a slice that is not JSON, or not a delta)."""


def wants_slices(state: Any, over: int | None = None) -> bool:
    """Whether ``state`` is large enough to be written in slices (``over``: ``SLICE_OVER``)."""
    if not isinstance(state, dict) or is_sliced(state):
        return False
    return sum(len(v) for v in state.values() if isinstance(v, dict)) > (SLICE_OVER if over is None else over)


def detach(state: dict[str, Any]) -> dict[str, Any]:
    """A copy of ``state`` whose object fields are copies too: what a slow write (``dump``)
    reads while the operator goes on changing its own (a copy of 1 M entries: ~0.1 s)."""
    return {k: dict(v) if isinstance(v, dict) else v for k, v in state.items()}


def _slices(state: dict[str, Any], entries: int | None) -> Iterator[bytes]:
    """The slices' JSON. ``entries`` per slice, or (None) as many as make ``SLICE_BYTES``,
    as measured on the slices so far."""
    plain = {k: v for k, v in state.items() if not isinstance(v, dict)}
    if plain:
        yield orjson.dumps({"set": plain}, option=_OPTS)
    for name, obj in state.items():
        if not isinstance(obj, dict):
            continue
        if not obj:
            yield orjson.dumps({"merge": {name: {}}}, option=_OPTS)
            continue
        items = iter(obj.items())
        n = entries or FIRST_ENTRIES
        while chunk := dict(itertools.islice(items, n)):
            raw = orjson.dumps({"merge": {name: chunk}}, option=_OPTS)
            if entries is None:
                n = max(1, int(SLICE_BYTES * len(chunk) / max(1, len(raw))))
            yield raw


async def dump_pieces(state: dict[str, Any], entries: int | None = None) -> list[bytes]:
    """``state`` as JSON in slices, as the pieces that joined make it (1 GB joined is one
    allocation of 1 GB: seconds of page faults on a small machine), letting the loop run
    between slices. ``state`` must not change meanwhile (``detach``)."""
    out = [MARK]
    for i, s in enumerate(_slices(state, entries)):
        if i:
            out.append(b",\n")
            await asyncio.sleep(0)
        out.append(s)
    out.append(END)
    return out


async def dump(state: dict[str, Any], entries: int | None = None) -> bytes:
    """``dump_pieces``, joined."""
    return b"".join(await dump_pieces(state, entries))


def dump_now(state: dict[str, Any], entries: int | None = None) -> bytes:
    """``dump`` without yielding (for a caller off the loop)."""
    return MARK + b",\n".join(_slices(state, entries)) + END


# ---------------------------------------------------------------- messages as pieces

Piece = tuple[bytes, int, int]  # (buffer, begin, end): a span of a buffer, not a copy


def pieces_len(pieces: list[Piece]) -> int:
    return sum(e - b for _, b, e in pieces)


def split_message(chunks: list[bytes]) -> tuple[bytes, list[Piece]] | None:
    """A message that came as ``chunks`` (its parts) and carries a state in slices: (the
    message with ``null`` in the state's place, the state's pieces), or None if it carries
    none. The state must begin in the first chunk (what comes before it is small); what
    comes after it may be large (a staged state's delta), and is joined."""
    if not chunks:
        return None
    chunks = list(chunks)
    # the head is small, but a part may end just inside it
    while len(chunks) > 1 and len(chunks[0]) < EDGE_BYTES:
        chunks[:2] = [chunks[0] + chunks[1]]
    first = chunks[0]
    begin = first.find(MARK)
    if begin < 0:
        return None
    found = _find_end(chunks, begin)
    if found is None:
        return None
    last_i, end = found
    last = chunks[last_i]
    head = b"".join([first[:begin], b"null", last[end:], *chunks[last_i + 1 :]])
    if last_i == 0:
        return head, [(first, begin, end)]
    middle = [(c, 0, len(c)) for c in chunks[1:last_i]]
    return head, [(first, begin, len(first)), *middle, (last, 0, end)]


def _find_end(chunks: list[bytes], begin: int) -> tuple[int, int] | None:
    """Where the state that begins at ``chunks[0][begin]`` ends: (chunk, offset past its
    end), searched from the back (the end is the last one: orjson writes no raw newline)."""
    n = len(END)
    for i in range(len(chunks) - 1, -1, -1):
        at = chunks[i].rfind(END, begin if i == 0 else 0)
        if at >= 0:
            return i, at + n
        if i > 0:  # across the boundary with the chunk before
            joint = chunks[i - 1][-(n - 1) :] + chunks[i][: n - 1]
            at = joint.rfind(END)
            if at >= 0:
                return i, at + n - (n - 1)
    return None


def _apply(state: dict[str, Any], line: bytes | memoryview, i: int) -> None:
    if len(line) and line[-1] == ord(","):
        line = line[:-1]
    try:
        delta = orjson.loads(line)
        statedelta.apply(state, delta)
    except (orjson.JSONDecodeError, statedelta.DeltaError) as e:
        raise SliceError(f"slice {i} of a state in slices: {e}") from None


def _piece_lines(pieces: list[Piece]) -> Iterator[bytes | memoryview]:
    """The lines of a state in slices held as pieces, a line spanning pieces joined (one
    slice's worth), the mark's and the end's lines left out."""
    pending: list[bytes | memoryview] = []
    first = True
    for buf, pos, end in pieces:
        while pos < end:
            nl = buf.find(b"\n", pos, end)
            if nl < 0:
                pending.append(memoryview(buf)[pos:end])
                break
            part = memoryview(buf)[pos:nl]
            line: bytes | memoryview = b"".join([*pending, part]) if pending else part
            pending = []
            pos = nl + 1
            if first:  # the mark's line
                first = False
                continue
            yield line
    # what is left after the last newline is the end's "]}"


async def load_pieces(pieces: list[Piece]) -> dict[str, Any]:
    """The state in slices held as ``pieces`` (``split_message``), a slice at a time, letting
    the loop run between slices."""
    state: dict[str, Any] = {}
    for i, line in enumerate(_piece_lines(pieces)):
        if i:
            await asyncio.sleep(0)
        _apply(state, line, i)
    return state


def load_pieces_now(pieces: list[Piece]) -> dict[str, Any]:
    """``load_pieces`` without yielding."""
    state: dict[str, Any] = {}
    for i, line in enumerate(_piece_lines(pieces)):
        _apply(state, line, i)
    return state


class PiecesReader(io.BufferedIOBase):
    """The pieces as a file to read (the object store's ``put`` reads it), copied once."""

    def __init__(self, pieces: list[Piece]) -> None:
        self._pieces = list(pieces)
        self._i = 0

    def readable(self) -> bool:
        return True

    def readinto(self, out: Any) -> int:
        view = memoryview(out).cast("B")
        n = 0
        while n < len(view) and self._i < len(self._pieces):
            buf, b, e = self._pieces[self._i]
            take = min(e - b, len(view) - n)
            view[n : n + take] = memoryview(buf)[b : b + take]
            n += take
            if b + take == e:
                self._i += 1
            else:
                self._pieces[self._i] = (buf, b + take, e)
        return n


class RawState:
    """A state in slices as it came, not parsed (``pieces`` of a message): what the master
    keeps in the object store as it is, and sends on so."""

    __slots__ = ("pieces",)

    def __init__(self, pieces: list[Piece]) -> None:
        self.pieces = pieces

    def __len__(self) -> int:
        return pieces_len(self.pieces)

    def reader(self) -> PiecesReader:
        return PiecesReader(self.pieces)

    def parse(self) -> dict[str, Any]:
        """The state, parsed here and now (without yielding)."""
        return load_pieces_now(self.pieces)

    def __repr__(self) -> str:  # never the bulk, in a log or a traceback
        return f"RawState({len(self)} bytes)"


def is_sliced(state: object) -> bool:
    return isinstance(state, dict) and len(state) == 1 and isinstance(state.get(SLICED), list)


def assemble(state: Any) -> Any:
    """A state parsed as plain JSON: if it is in slices, the state they make (else as it is)."""
    if not is_sliced(state):
        return state
    whole: dict[str, Any] = {}
    for i, delta in enumerate(state[SLICED]):
        try:
            statedelta.apply(whole, delta)
        except statedelta.DeltaError as e:
            raise SliceError(f"slice {i} of a state in slices: {e}") from None
    return whole


__all__ = [
    "SLICED",
    "SLICE_BYTES",
    "SLICE_OVER",
    "Piece",
    "PiecesReader",
    "RawState",
    "SliceError",
    "assemble",
    "detach",
    "dump",
    "dump_now",
    "dump_pieces",
    "is_sliced",
    "load_pieces",
    "load_pieces_now",
    "pieces_len",
    "split_message",
    "wants_slices",
]
