"""File edges: files move between devices in checksummed chunks, streamed, never held whole.

Sender (``FileSender``, one per outgoing file edge): reads each file named by an emitted
file record in ``CHUNK``-byte pieces and publishes them in order (QoS 1), the last one
carrying the SHA-256 of the whole file and chunk 0 the record's metadata. At most
``byte_window`` bytes are in flight beyond what the consumer reported receiving, so
neither side nor the broker ever holds more than that of a file, whatever its size.

Receiver (``FileReceiver``, one per incoming file edge): appends chunks to a ``.part`` file
in the task's ``incoming`` directory while hashing them, and delivers the file (a record
with a local ``path``) only when the size and the SHA-256 match. A gap, a corrupt or a
truncated file is never delivered: the partial file is dropped and the receiver asks the
producer to send again from that file on (``ResendRequest``, go-back-N); files arriving
meanwhile out of order are dropped too, so delivery stays in order and exactly once.

The producer keeps each file record until the consumer's progress report passes it, so it
can always resend; the file itself must stay in place until then.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import hashlib
import logging
import os
import re
import time
from pathlib import Path
from typing import IO, Any

from echo_shared.codec import encode_chunk
from echo_shared.messages import ChannelProgress, FileChunkHeader, ResendRequest

from .retransmit import Unconfirmed
from .transports import Transport

log = logging.getLogger(__name__)

CHUNK = 256 * 1024
BYTE_WINDOW = 8 * 1024 * 1024
RESEND_INTERVAL = 1.0


class FileSender:
    def __init__(
        self,
        mqtt: Transport,
        producer: str,
        generation: int,
        topic: str,
        *,
        chunk: int = CHUNK,
        byte_window: int = BYTE_WINDOW,
    ) -> None:
        self.mqtt = mqtt
        self.producer = producer
        self.generation = generation
        self.chunks_sent = 0  # metrics: chunks published, first sends and resends alike
        self.bytes_sent = 0
        self.topic = topic
        self.chunk = chunk
        self.byte_window = byte_window
        self.records: dict[int, dict[str, Any]] = {}  # unconfirmed file records by seq
        self.sent: dict[int, int] = {}  # bytes of each unconfirmed file handed to the broker
        self.queue: collections.deque[int] = collections.deque()
        self.done: dict[int, asyncio.Future[None]] = {}  # resolved when all chunks are at the broker
        self.hwm = 0  # every file up to here is delivered at the consumer
        self.consumer_at = (0, 0)  # (file seq, bytes) the consumer has of the file it receives
        self.files_sent = 0
        self.unconfirmed = Unconfirmed()  # holds the end of stream until confirmed
        self._wake = asyncio.Event()
        self._credit = asyncio.Event()
        self._restart = False
        self._task: asyncio.Task[None] | None = None

    # ------------------------------------------------------------ the Outputs side

    def add(self, seq: int, record: Any) -> None:
        if not isinstance(record, dict) or not isinstance(record.get("path"), str):
            raise ValueError(f"a file edge needs file records with a 'path', got {record!r:.200}")
        self.records[seq] = record
        self.queue.append(seq)
        self.done[seq] = asyncio.get_running_loop().create_future()
        self._wake.set()

    def barrier(self) -> asyncio.Future[None] | None:
        """Resolved once every file queued so far is at the broker (files go in order)."""
        pending = [s for s, f in self.done.items() if not f.done()]
        return self.done[max(pending)] if pending else None

    def close(self) -> None:
        return None

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name=f"file-sender-{self.topic}")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task
            self._task = None
        for fut in self.done.values():
            if not fut.done():
                fut.cancel()

    async def drain(self, timeout: float | None) -> None:
        """Wait until every queued file is at the broker."""
        futs = [f for f in self.done.values() if not f.done()]
        if futs:
            await asyncio.wait_for(asyncio.gather(*futs), timeout)

    # ------------------------------------------------------------ the consumer's reports

    def on_progress(self, report: ChannelProgress) -> None:
        if report.hwm > self.hwm:
            self.hwm = report.hwm
            for seq in [s for s in self.records if s <= self.hwm]:
                done_with = self.records.pop(seq)
                if done_with.get("_transient"):  # ours to delete, now that the next hop has it
                    with contextlib.suppress(OSError):
                        os.unlink(done_with["path"])
                self.sent.pop(seq, None)
                fut = self.done.pop(seq, None)
                if fut is not None and not fut.done():
                    fut.set_result(None)  # delivered, so certainly at the broker
        self.consumer_at = (report.file_seq, report.file_offset)
        self._credit.set()

    def resend_from(self, seq: int, reason: str) -> None:
        """Send every unconfirmed file from ``seq`` on again (go-back-N)."""
        again = sorted(s for s in self.records if s >= seq)
        if not again:
            return
        log.info("%s: sending again from file %d (%s)", self.topic, again[0], reason)
        for s in again:
            self.sent[s] = 0
        self.queue = collections.deque(again)
        self._restart = True
        self._wake.set()
        self._credit.set()

    @property
    def in_flight(self) -> int:
        """Bytes handed to the broker that the consumer has not reported receiving."""
        total = sum(n for s, n in self.sent.items() if s > self.hwm)
        seq, offset = self.consumer_at
        if seq > self.hwm and seq in self.sent:
            total -= min(offset, self.sent[seq])
        return total

    # ------------------------------------------------------------ sending

    async def _run(self) -> None:
        while True:
            while not self.queue:
                self._wake.clear()
                await self._wake.wait()
            seq = self.queue.popleft()
            self._restart = False
            if seq not in self.records:
                continue  # confirmed meanwhile
            try:
                await self._send(seq, self.records[seq])
            except OSError as e:
                fut = self.done.get(seq)
                if fut is not None and not fut.done():
                    fut.set_exception(OSError(f"cannot send {self.records[seq].get('path')}: {e}"))
                raise

    async def _send(self, seq: int, record: dict[str, Any]) -> None:
        path = Path(record["path"])
        size = await asyncio.to_thread(os.path.getsize, path)
        meta = {k: v for k, v in record.items() if k not in ("path", "_transient")}
        meta.setdefault("name", path.name)
        meta["size"] = size
        sha = hashlib.sha256()
        f: IO[bytes] = await asyncio.to_thread(open, path, "rb")
        try:
            offset, index = 0, 0
            last_fut: asyncio.Future[None] | None = None
            while True:
                data = await asyncio.to_thread(f.read, self.chunk)
                sha.update(data)
                last = offset + len(data) >= size or not data
                header = FileChunkHeader(
                    producer=self.producer,
                    generation=self.generation,
                    seq=seq,
                    index=index,
                    offset=offset,
                    size=size,
                    last=last,
                    sha256=sha.hexdigest() if last else None,
                    meta=meta if index == 0 else None,
                )
                await self._wait_credit(len(data))
                if self._restart:
                    return  # a resend request: the queue starts over
                last_fut = self.mqtt.publish(self.topic, encode_chunk(header, data), qos=1)
                self.chunks_sent += 1
                self.bytes_sent += len(data)
                self.sent[seq] = self.sent.get(seq, 0) + len(data)
                offset += len(data)
                index += 1
                if last:
                    break
        finally:
            await asyncio.to_thread(f.close)
        self.files_sent += 1
        done = self.done.get(seq)
        if done is not None and last_fut is not None:
            last_fut.add_done_callback(lambda fut: _settle(fut, done))

    async def _wait_credit(self, n: int) -> None:
        await self.mqtt.wait_for_window()
        while self.in_flight + n > self.byte_window and self.in_flight > 0 and not self._restart:
            self._credit.clear()
            await self._credit.wait()


def _settle(src: asyncio.Future[None], dst: asyncio.Future[None]) -> None:
    if dst.done():
        return
    if src.cancelled() or src.exception() is not None:
        dst.set_exception(src.exception() or asyncio.CancelledError())
    else:
        dst.set_result(None)


_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


class FileReceiver:
    """Reassembles one producer's files on one incoming file edge."""

    def __init__(
        self,
        mqtt: Transport,
        consumer: str,
        producer: str,
        resend_topic: str,
        incoming: Path,
        hwm: int = 0,
    ) -> None:
        self.mqtt = mqtt
        self.consumer = consumer
        self.producer = producer
        self.resend_topic = resend_topic
        self.incoming = incoming
        self.expected = hwm + 1
        self.rejected = 0
        self._part: IO[bytes] | None = None
        self._part_path: Path | None = None
        self._sha = hashlib.sha256()
        self._next_index = 0
        self._offset = 0
        self._meta: dict[str, Any] = {}
        self._last_request: tuple[int, float] = (0, 0.0)

    @property
    def position(self) -> tuple[int, int]:
        """(seq of the file being received, bytes of it so far)."""
        return (self.expected, self._offset)

    def on_chunk(self, h: FileChunkHeader, data: memoryview) -> dict[str, Any] | None:
        """Take one chunk; returns the delivered file record when a file is complete and intact."""
        if h.seq < self.expected:
            return None  # a file delivered already (redelivery, or a resend overlapping)
        if h.seq > self.expected:
            self._reject(f"file {h.seq} arrived while {self.expected} is still missing")
            return None
        if h.index == 0:
            self._begin(h)
        elif self._part is None or h.index != self._next_index:
            if self._part is not None and h.index < self._next_index:
                return None  # a chunk written already, delivered again
            self._reject(f"chunk {h.index} of file {h.seq} arrived, chunk {self._next_index} expected")
            return None
        assert self._part is not None
        self._part.write(data)
        self._sha.update(data)
        self._offset += len(data)
        self._next_index += 1
        if not h.last:
            if self._offset > h.size:
                self._reject(f"file {h.seq} is longer than its declared {h.size} bytes")
            return None
        return self._complete(h)

    def _begin(self, h: FileChunkHeader) -> None:
        self._drop_partial()
        self.incoming.mkdir(parents=True, exist_ok=True)
        self._part_path = self.incoming / f"{self.producer}-{h.seq}.part"
        self._part = open(self._part_path, "wb")  # noqa: SIM115 - closed in _complete/_drop_partial
        self._sha = hashlib.sha256()
        self._next_index = 0
        self._offset = 0
        self._meta = dict(h.meta or {})

    def _complete(self, h: FileChunkHeader) -> dict[str, Any] | None:
        assert self._part is not None and self._part_path is not None
        if self._offset != h.size or self._sha.hexdigest() != h.sha256:
            why = f"size {self._offset} != {h.size}" if self._offset != h.size else "SHA-256 mismatch"
            self._reject(f"file {h.seq} failed its check ({why})")
            return None
        self._part.flush()
        os.fsync(self._part.fileno())
        self._part.close()
        self._part = None
        name = _UNSAFE.sub("_", str(self._meta.get("name") or f"file-{h.seq}"))[:200] or f"file-{h.seq}"
        final = self.incoming / f"{self.producer}-{h.seq}-{name}"
        os.replace(self._part_path, final)
        self._part_path = None
        self.expected = h.seq + 1
        self._offset = 0
        record = dict(self._meta)
        record["path"] = str(final)
        record["sha256"] = h.sha256
        return record

    def _reject(self, reason: str) -> None:
        self.rejected += 1
        self._drop_partial()
        seq, at = self._last_request
        now = time.monotonic()
        if seq == self.expected and now - at < RESEND_INTERVAL:
            return
        self._last_request = (self.expected, now)
        log.warning(
            "%s <- %s: %s; asking for file %d again", self.consumer, self.producer, reason, self.expected
        )
        req = ResendRequest(consumer=self.consumer, producer=self.producer, seq=self.expected, reason=reason)
        self.mqtt.publish(self.resend_topic, req.to_bytes(), qos=1)

    def _drop_partial(self) -> None:
        if self._part is not None:
            self._part.close()
            self._part = None
        if self._part_path is not None:
            with contextlib.suppress(FileNotFoundError):
                self._part_path.unlink()
            self._part_path = None
        self._offset = 0
        self._next_index = 0

    def close(self) -> None:
        self._drop_partial()
