"""One output channel's on-disk spool: what a producer keeps while its broker is out of reach.

The spool is a log of the channel's data messages in seq order, split in segment files
``<first seq>.<kind>.seg`` in the channel's spool directory (mode 0700, files 0600):

- ``sent`` segments hold messages published before the link was lost and not confirmed
  by the consumer yet (it may have them): they are sent again, never dropped;
- ``new`` segments hold messages never published: the overflow policy may drop them.

An entry is a fixed header (crc32 of the payload, its length, first and last seq, the
records it carries, when it was written) and the payload. A torn tail (a crash in the
middle of a write) is cut off when the spool is opened again.

Limits: ``max_bytes`` on disk and ``max_age`` per message. When an append would pass
``max_bytes``, ``drop_oldest`` drops the oldest unread ``new`` segments (whole segments:
the records they held are counted in ``dropped`` and their seq range is reported by
``next()`` as a ``Skipped`` so the consumer stops waiting for them); under ``block`` the
producing task waits while ``full()`` says so. Messages older than
``max_age`` are dropped the same way whatever the policy: data that old is worth nothing.

Reading: ``next()`` returns what to send next, in order, from disk. A segment is deleted
once its consumer confirmed all of it (``release(hwm)``), never earlier, so a crash after
sending loses nothing the consumer lacks.

Durability: ``fsync`` ``always`` syncs after every append; ``checkpoint`` (the default)
when the task takes a local checkpoint (``sync()``), so a checkpoint never claims a
message the disk lost; ``never`` leaves it to the kernel. A killed agent loses nothing in
any mode (the page cache outlives the process); a power cut may lose what came after the
last sync, which a task restored from its local checkpoint emits again.
"""

from __future__ import annotations

import collections
import contextlib
import logging
import os
import struct
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO, Literal

log = logging.getLogger(__name__)

HEADER = struct.Struct("<IIqqId")  # crc32, payload length, first seq, last seq, records, written at
SEGMENT_BYTES = 8 << 20
Overflow = Literal["drop_oldest", "block"]
Fsync = Literal["always", "checkpoint", "never"]


@dataclass(slots=True)
class Entry:
    first: int
    last: int
    records: int
    payload: bytes


@dataclass(slots=True)
class Skipped:
    """Records ``first..last`` were dropped: the consumer is told to stop waiting for them."""

    first: int
    last: int
    records: int


@dataclass(slots=True)
class Segment:
    path: Path
    sent: bool
    first: int
    last: int = 0
    records: int = 0
    size: int = 0
    newest: float = 0.0
    read_at: int | None = None  # None: not read yet; else the offset the reader reached
    dropped: bool = False

    @property
    def unread(self) -> bool:
        return self.read_at is None


def _order(path: Path) -> tuple[int, int]:
    """A segment's or tombstone's place: its first seq, then when it was made."""
    first, _, rest = path.name.partition("-")
    return int(first), int(rest.split(".", 1)[0])


def _tombstone(path: Path) -> Segment:
    """A dropped range left by a previous run (``<first>-<n>.<last>.<records>.drop``): the
    consumer is told again (a skip is harmless twice)."""
    first, _ = _order(path)
    _, last, records, _ = path.name.split(".")
    return Segment(path=path, sent=False, first=first, last=int(last), records=int(records), dropped=True)


@dataclass
class Spool:
    directory: Path
    max_bytes: int = 1 << 30
    max_age: float = 86400.0
    overflow: Overflow = "block"
    fsync: Fsync = "checkpoint"
    segment_bytes: int = 0  # 0: a sixteenth of max_bytes, within 64 KiB .. 8 MiB
    clock: Callable[[], float] = time.time  # when a message is written (the age limit)
    segments: collections.deque[Segment] = field(default_factory=collections.deque)
    size: int = 0
    dropped: int = 0  # records dropped (full, or too old)
    appended: int = 0  # messages appended
    _writer: BinaryIO | None = None
    _reader: BinaryIO | None = None
    _reading: Segment | None = None  # the segment ``_reader`` reads
    _rolls: int = 0  # segments made so far (part of their names, which never repeat)

    def __post_init__(self) -> None:
        if not self.segment_bytes:
            self.segment_bytes = max(64 << 10, min(SEGMENT_BYTES, self.max_bytes // 16))

    # ---------------------------------------------------------------- opening

    def open(self, keep_through: int | None = None) -> None:
        """Take up what a previous run left (cutting a torn tail, and with ``keep_through``
        every entry that starts after that seq: the restored task emits those again). What
        is recovered is sent again and never dropped: it may have been delivered."""
        self.directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        found = sorted([*self.directory.glob("*.seg"), *self.directory.glob("*.drop")], key=_order)
        self._rolls = max((_order(p)[1] for p in found), default=0)
        for path in found:
            seg = self._recover(path, keep_through) if path.suffix == ".seg" else _tombstone(path)
            if seg is None or (keep_through is not None and seg.dropped and seg.first > keep_through):
                path.unlink(missing_ok=True)
                continue
            self.segments.append(seg)
            self.size += seg.size if not seg.dropped else 0
        if self.segments:
            log.info(
                "spool %s: %d segment(s) left by the previous run, %d bytes, seq %d..%d",
                self.directory.name,
                len(self.segments),
                self.size,
                self.segments[0].first,
                self.segments[-1].last,
            )

    def _recover(self, path: Path, keep_through: int | None) -> Segment | None:  # a .seg file
        seg = Segment(path=path, sent=True, first=0)
        good = 0
        with open(path, "r+b") as f:
            while True:
                head = f.read(HEADER.size)
                if len(head) < HEADER.size:
                    break
                crc, n, first, last, records, at = HEADER.unpack(head)
                payload = f.read(n)
                if len(payload) < n or zlib.crc32(payload) != crc:
                    break
                if keep_through is not None and first > keep_through:
                    break
                if not seg.records:
                    seg.first = first
                seg.last, seg.records, seg.newest = last, seg.records + records, max(seg.newest, at)
                good = f.tell()
            if good < os.fstat(f.fileno()).st_size:
                f.truncate(good)
        seg.size = good
        return seg if good else None

    # ---------------------------------------------------------------- writing

    def full(self, size: int) -> bool:
        """Would an append of ``size`` payload bytes pass ``max_bytes`` (after dropping what
        is too old)?"""
        self._expire(self.clock())
        over = self.size + HEADER.size + size > self.max_bytes
        return over and (self.overflow == "block" or not self._droppable())

    def append(self, first: int, last: int, records: int, payload: bytes, *, sent: bool = False) -> None:
        """Add a message at the end (``drop_oldest``: dropping the oldest unread messages for room)."""
        now = self.clock()
        need = HEADER.size + len(payload)
        self._expire(now)
        # what may have been delivered (sent) is kept whatever the limit; under ``block`` the
        # producer waits on ``full()`` before it emits, so one burst may pass the limit
        while not sent and self.overflow == "drop_oldest" and self.size + need > self.max_bytes:
            if not self._drop_oldest("full"):
                break
        seg = self.segments[-1] if self.segments else None
        if (
            seg is None
            or seg.dropped
            or seg.sent != sent
            or seg.size + need > self.segment_bytes
            or self._writer is None
        ):
            seg = self._roll(first, sent)
        assert self._writer is not None
        self._writer.write(HEADER.pack(zlib.crc32(payload), len(payload), first, last, records, now))
        self._writer.write(payload)
        if not seg.records:
            seg.first = first
        seg.last, seg.records, seg.size, seg.newest = last, seg.records + records, seg.size + need, now
        self.size += need
        self.appended += 1
        if self.fsync == "always":
            self.sync()

    def _roll(self, first: int, sent: bool) -> Segment:
        self._close_writer(sync=self.fsync != "never")
        self._rolls += 1  # names never repeat: a seq range may be spooled twice
        path = self.directory / f"{first:020d}-{self._rolls:08d}.{'sent' if sent else 'new'}.seg"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND, 0o600)
        self._writer = os.fdopen(fd, "ab", buffering=256 << 10)
        seg = Segment(path=path, sent=sent, first=first)
        self.segments.append(seg)
        return seg

    def sync(self) -> None:
        """Flush the open segment to disk (``fsync`` ``never``: to the kernel only)."""
        if self._writer is not None:
            self._writer.flush()
            if self.fsync != "never":
                os.fsync(self._writer.fileno())

    def _close_writer(self, *, sync: bool) -> None:
        w, self._writer = self._writer, None
        if w is not None:
            w.flush()
            if sync:
                os.fsync(w.fileno())
            w.close()

    # ---------------------------------------------------------------- dropping

    def _droppable(self) -> bool:
        return any(s.unread and not s.sent and not s.dropped for s in self.segments)

    def _drop_oldest(self, why: str) -> bool:
        for seg in self.segments:
            if seg.unread and not seg.sent and not seg.dropped:
                self._drop(seg, why)
                return True
        return False

    def _expire(self, now: float) -> None:
        for seg in list(self.segments):
            if seg.unread and not seg.sent and not seg.dropped and now - seg.newest > self.max_age:
                self._drop(seg, "too old")

    def _drop(self, seg: Segment, why: str) -> None:
        if self._writer is not None and seg is self.segments[-1]:
            self._close_writer(sync=False)
        # a tombstone keeps the range until the consumer confirmed past it, so a restart
        # still tells the consumer what was dropped
        stone = seg.path.with_name(seg.path.name.split(".", 1)[0] + f".{seg.last}.{seg.records}.drop")
        fd = os.open(stone, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        os.close(fd)
        seg.path.unlink(missing_ok=True)
        seg.path = stone
        seg.dropped = True
        self.size -= seg.size
        self.dropped += seg.records
        log.debug("spool %s: dropped seq %d..%d (%s)", self.directory.name, seg.first, seg.last, why)

    # ---------------------------------------------------------------- reading

    def next(self) -> Entry | Skipped | None:
        """What to send next, in order (None: everything spooled has been read)."""
        for seg in self.segments:
            if seg.dropped:
                if seg.read_at is None:
                    seg.read_at = 0
                    return Skipped(seg.first, seg.last, seg.records)
                continue
            if seg.read_at is not None and seg.read_at >= seg.size:
                continue
            entry = self._read(seg)
            if entry is not None:
                return entry
        return None

    def _read(self, seg: Segment) -> Entry | None:
        if seg is self.segments[-1] and self._writer is not None:
            self._writer.flush()
        offset = seg.read_at or 0
        if self._reader is None or self._reading is not seg:
            if self._reader is not None:
                self._reader.close()
            self._reader = open(seg.path, "rb")  # noqa: SIM115 - kept open across calls
            self._reading = seg
        self._reader.seek(offset)
        head = self._reader.read(HEADER.size)
        if len(head) < HEADER.size:
            seg.read_at = seg.size
            return None
        _crc, n, first, last, records, _at = HEADER.unpack(head)
        payload = self._reader.read(n)
        seg.read_at = offset + HEADER.size + n
        return Entry(first, last, records, payload)

    @property
    def unread(self) -> bool:
        """Something spooled has not been read (sent) yet."""
        return any(
            (s.dropped and s.read_at is None) or (not s.dropped and (s.read_at or 0) < s.size)
            for s in self.segments
        )

    def release(self, hwm: int) -> None:
        """The consumer confirmed every record up to ``hwm``: reclaim what is wholly read and
        confirmed (or dropped and reported)."""
        while self.segments:
            seg = self.segments[0]
            read = seg.read_at is not None and (seg.dropped or seg.read_at >= seg.size)
            if not read or seg.last > hwm:
                return
            if not seg.dropped:
                if self._writer is not None and seg is self.segments[-1]:
                    self._close_writer(sync=False)
                if self._reader is not None and self._reading is seg:
                    self._reader.close()
                    self._reader, self._reading = None, None
                self.size -= seg.size
            seg.path.unlink(missing_ok=True)  # the segment, or a dropped range's tombstone
            self.segments.popleft()

    @property
    def empty(self) -> bool:
        return not self.segments

    def close(self, *, remove: bool = False) -> None:
        """Close the files (``remove``: delete the spool, the task is gone for good)."""
        self._close_writer(sync=not remove and self.fsync != "never")
        if self._reader is not None:
            self._reader.close()
            self._reader, self._reading = None, None
        if remove:
            for seg in self.segments:
                seg.path.unlink(missing_ok=True)
            self.segments.clear()
            self.size = 0
            with contextlib.suppress(OSError):
                for p in [*self.directory.glob("*.seg"), *self.directory.glob("*.drop")]:
                    p.unlink()
                self.directory.rmdir()
