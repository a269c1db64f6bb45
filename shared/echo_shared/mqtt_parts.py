"""Messages larger than one MQTT packet, sent in parts (what the adapter does without paho).

MQTT caps a packet at 256 MiB, and a large operator state (a checkpoint, a staged state,
a deploy that restores one) can be larger. And well below that, one large packet holds up
everything behind it: Mosquitto relays a message in one go on its single thread, and a
client writes it in one go on its loop; 100 MB took the broker ~2 s, during which a moving
task's checkpoint notices, so its flow, stood still (2.1 s of downtime at 100 MB of state;
0.8 s in 4 MiB parts, with the flow filling in 52 s instead of 72). The adapter
(``mqtt.MqttClient``) sends a payload over ``PART_OVER`` bytes as ``PART_BYTES`` parts,
QoS 1, on the same topic, each with a user property ``echo-part``::

    "<transfer id> <index> <count> <total bytes> <crc32 of this part>"

and the receiving adapter joins them (or hands them over as they are: ``whole_payloads``)
and gives its handler one message, as if it had come whole. A receiver of the version
before takes a message over ``PART_OVER`` no more (it drops each part as malformed): the
master and the agents of a fleet whose states pass 8 MiB are upgraded together.

- *Sending:* at most ``AHEAD`` parts wait for the broker's acknowledgement at a time, so
  what else the client publishes goes out between them instead of behind the whole
  transfer; the publish's future resolves once every part is acknowledged.
- *Receiving:* parts are held until their message is whole. A manual-ack client
  acknowledges a joined message's parts together, when its handler acknowledges the
  message (``MqttMessage.more_mids``): a receiver that dies before handling it gets every
  unacknowledged part again from its session, and a duplicate part is taken once. So a
  message in parts is delivered at least once, like any other.
- *Bounds:* what is held is bounded (``max_bytes`` across transfers); a transfer that would
  pass it, a part that does not fit its transfer (index, count, size, checksum), and a
  transfer left incomplete for ``idle_seconds`` are dropped (their parts acknowledged),
  each with a reason logged once per transfer and counted (``Assembler.dropped``).
"""

from __future__ import annotations

import logging
import time
import uuid
import zlib
from collections import Counter, OrderedDict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

log = logging.getLogger(__name__)

HEADER = "echo-part"
PART_OVER = 8 * 2**20  # bytes: a payload over this goes in parts
PART_BYTES = 4 * 2**20  # bytes per part
AHEAD = 2  # parts published and not yet acknowledged, at most, per transfer
MAX_PARTS = 65_536
MAX_BYTES = 4 * 2**30  # held across unfinished transfers, by default
GONE_KEPT = 1024  # dropped transfers remembered, so their later parts are dropped quietly
IDLE_SECONDS = 120.0  # an unfinished transfer with no new part for this long is dropped


class PartRejected(ValueError):
    """A part that cannot be taken; ``reason`` names the problem (what is counted)."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason


def total_of(payload: bytes | Sequence[bytes]) -> int:
    return len(payload) if isinstance(payload, bytes | bytearray) else sum(len(p) for p in payload)


def split(payload: bytes | Sequence[bytes], part_bytes: int = PART_BYTES) -> Iterator[tuple[bytes, str]]:
    """``payload``'s parts (made as they are asked for: a payload given as pieces is never
    joined whole) and each one's ``echo-part`` header. Raises ``ValueError`` at once if it
    would take more than ``MAX_PARTS``."""
    pieces = [payload] if isinstance(payload, bytes | bytearray) else list(payload)
    total = total_of(pieces)
    count = max(1, -(-total // part_bytes))
    if count > MAX_PARTS:
        raise ValueError(f"{total} bytes would be {count} parts (at most {MAX_PARTS})")
    return _parts(pieces, total, count, part_bytes)


def _parts(pieces: list[bytes], total: int, count: int, part_bytes: int) -> Iterator[tuple[bytes, str]]:
    xid = uuid.uuid4().hex[:16]
    i, offset = 0, 0  # the piece being cut, and where in it
    for n in range(count):
        want = min(part_bytes, total - n * part_bytes)
        bits: list[memoryview] = []
        while want:
            piece = memoryview(pieces[i])[offset:]
            take = min(want, len(piece))
            bits.append(piece[:take])
            want -= take
            offset += take
            if offset == len(pieces[i]):
                i, offset = i + 1, 0
        part = bytes(bits[0]) if len(bits) == 1 else b"".join(bits)
        yield part, f"{xid} {n} {count} {total} {zlib.crc32(part)}"


@dataclass(frozen=True)
class Header:
    xid: str
    index: int
    count: int
    total: int
    crc: int

    @classmethod
    def parse(cls, text: str) -> Header:
        fields = text.split(" ")
        if len(fields) != 5:
            raise PartRejected("bad header", f"{text[:80]!r}: 5 fields expected")
        xid = fields[0]
        try:
            index, count, total, crc = (int(f) for f in fields[1:])
        except ValueError:
            raise PartRejected("bad header", f"{text[:80]!r}: not numbers") from None
        if not (1 <= len(xid) <= 32 and xid.isalnum()):
            raise PartRejected("bad header", f"transfer id {xid[:40]!r}")
        if not (0 < count <= MAX_PARTS and 0 <= index < count and total >= 0 and crc >= 0):
            raise PartRejected("bad header", f"{text[:80]!r}: out of range")
        return cls(xid, index, count, total, crc)


@dataclass
class _Transfer:
    header: Header
    parts: dict[int, bytes] = field(default_factory=dict)
    mids: dict[int, int] = field(default_factory=dict)  # index -> the delivery's packet id
    held: int = 0
    touched: float = 0.0


@dataclass(frozen=True)
class Joined:
    """A whole message: its parts, in order, and each one's packet id (to acknowledge)."""

    parts: list[bytes]
    mids: list[int]

    @property
    def payload(self) -> bytes:
        return b"".join(self.parts)


class Assembler:
    """Parts in, whole messages out, within ``max_bytes`` (see the module's text)."""

    def __init__(self, max_bytes: int = MAX_BYTES, idle_seconds: float = IDLE_SECONDS) -> None:
        self.max_bytes = max_bytes
        self.idle_seconds = idle_seconds
        self._open: dict[tuple[str, str], _Transfer] = {}
        self._gone: OrderedDict[tuple[str, str], None] = OrderedDict()  # transfers lately dropped
        self.held = 0  # bytes held across unfinished transfers
        self.joined = 0
        self.dropped: Counter[str] = Counter()  # transfers (or stray parts) dropped, by reason

    def add(
        self, topic: str, header_text: str, data: bytes, mid: int, now: float | None = None
    ) -> tuple[Joined | None, list[int]]:
        """Take one part: (the whole message if it completed one, packet ids to acknowledge
        now: those of a dropped transfer, or of a duplicate part)."""
        now = time.monotonic() if now is None else now
        released = self.expire(now)
        try:
            h = Header.parse(header_text)
        except PartRejected as e:
            self._drop_reason(topic, "?", e)
            return None, [*released, mid]
        key = (topic, h.xid)
        if key in self._gone:  # the rest of a transfer already dropped (and said so)
            return None, [*released, mid]
        t = self._open.get(key)
        try:
            if t is None:
                if h.total > self.max_bytes:
                    raise PartRejected("too large", f"{h.total} bytes (at most {self.max_bytes} held)")
                t = self._open[key] = _Transfer(h, touched=now)
            elif (t.header.count, t.header.total) != (h.count, h.total):
                raise PartRejected("bad header", "count or size differs from the transfer's first part")
            if zlib.crc32(data) != h.crc:
                raise PartRejected("bad part", f"part {h.index}: checksum mismatch")
            if h.index in t.parts:  # a redelivery: its newer packet id is the one to acknowledge
                old = t.mids[h.index]
                t.mids[h.index] = mid
                t.touched = now
                return None, [*released, old]
            if t.held + len(data) > h.total:
                raise PartRejected("bad part", f"parts add up to more than {h.total} bytes")
            if self.held + len(data) > self.max_bytes:
                raise PartRejected("too large", f"more than {self.max_bytes} bytes held across transfers")
        except PartRejected as e:
            dropped = self._drop(key, e)
            return None, [*released, *dropped, mid]
        t.parts[h.index] = data
        t.mids[h.index] = mid
        t.held += len(data)
        t.touched = now
        self.held += len(data)
        if len(t.parts) < h.count:
            return None, released
        del self._open[key]
        self.held -= t.held
        if t.held != h.total:
            self._drop_reason(topic, h.xid, PartRejected("bad part", f"{t.held} bytes, {h.total} said"))
            return None, [*released, *t.mids.values()]
        self.joined += 1
        return Joined([t.parts[i] for i in range(h.count)], [t.mids[i] for i in range(h.count)]), released

    def expire(self, now: float | None = None) -> list[int]:
        """Drop transfers idle for ``idle_seconds``; the packet ids of their parts."""
        now = time.monotonic() if now is None else now
        stale = [k for k, t in self._open.items() if now - t.touched > self.idle_seconds]
        mids: list[int] = []
        for k in stale:
            mids += self._drop(k, PartRejected("incomplete", f"no part for {self.idle_seconds:g}s"))
        return mids

    def reset(self) -> None:
        """A new connection: the packet ids held mean nothing on it (the broker redelivers
        every unacknowledged part, which joins its transfer again)."""
        for t in self._open.values():
            t.mids.clear()
            self.held -= t.held
        self._open.clear()

    def _drop(self, key: tuple[str, str], e: PartRejected) -> list[int]:
        t = self._open.pop(key, None)
        self._drop_reason(key[0], key[1], e)
        self._gone[key] = None
        while len(self._gone) > GONE_KEPT:
            self._gone.popitem(last=False)
        if t is None:
            return []
        self.held -= t.held
        return list(t.mids.values())

    def _drop_reason(self, topic: str, xid: str, e: PartRejected) -> None:
        self.dropped[e.reason] += 1
        log.warning("a message in parts on %s (transfer %s) dropped: %s", topic, xid, e)


__all__ = [
    "AHEAD",
    "HEADER",
    "PART_BYTES",
    "PART_OVER",
    "Assembler",
    "Header",
    "Joined",
    "PartRejected",
    "split",
    "total_of",
]
