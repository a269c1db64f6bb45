"""The data plane of one task: outgoing channels, incoming deduplication, ordered acks, credit.

- ``Outputs`` gives every record the task emits its id (``producer``, ``seq``; ``seq`` grows
  by one per record and is part of the task's state) and hands it to each outgoing
  channel by its edge's model: a ``stream`` channel publishes one message per record, a
  ``batch`` channel one message per micro-batch (closed at ``count`` records or ``seconds``
  after its first), a ``file`` channel streams the named file in checksummed chunks
  (``files.FileSender``).
- The consumer side (``intake``): ``Inputs`` drops records already seen, ``AckQueue``
  acknowledges an input message only once the outputs it caused are safe at the broker,
  in arrival order; a crash anywhere loses nothing: unacknowledged input is redelivered.
- Credit: each consumer reports its high-water mark per producer on the channel's retained
  progress topic (``Progress``); a producer never runs more than ``window`` records ahead of
  its slowest consumer (``Outputs.wait_window`` blocks it), so what the broker queues for a
  channel stays bounded, and back-pressure reaches the sources.
- Retransmission: brokers lose messages (Mosquitto 2.0 drops QoS 1 deliveries under load,
  a broker restarted without persistence forgets its queues), so the channel does not rely
  on them. A producer keeps every message until its consumer's progress report covers it
  (at most a window of records). A consumer that sees a gap drops what comes after it and
  asks for everything from the gap on (``ResendRequest``, go-back-N); a producer whose
  consumer reported nothing for ``RETRANSMIT_AFTER`` seconds while messages are unconfirmed
  sends them again (a lost tail, a lost end of stream). Duplicates are dropped by seq.
- A stalled edge is never silent: when a channel's consumer has confirmed nothing for
  ``STALL_AFTER`` seconds while messages wait (resends included), ``Outputs.stalled`` names
  the edge, and the task's reports carry it as their reason (the master shows it on the
  task and the dataflow) until the edge moves again.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import logging
from collections.abc import Iterable
from typing import Any

from pydantic import ValidationError

from echo_shared.codec import encode_eos, encode_records, restamp
from echo_shared.messages import Binding, ChannelProgress, ResendRequest
from echo_shared.models import BatchSpec, ChannelCounts, EdgeModel
from echo_shared.mqtt import MqttMessage
from echo_shared.names import Names

from .files import FileSender
from .outbox import LINK_POLL, Outbox, SpoolSettings
from .recordtrace import carried
from .retransmit import RETRANSMIT_AFTER, Unconfirmed
from .spool import Spool
from .transports import Transport

DEFAULT_WINDOW = 10_000
COALESCE_RECORDS = 256  # records of a stream edge in one message at most
COALESCE_LINGER = 0.005  # seconds a stream record waits for the message in flight, at most
STREAM_LIMITS = BatchSpec(count=COALESCE_RECORDS, seconds=COALESCE_LINGER, adaptive=True)
MAX_MESSAGE_BYTES = 512 * 1024  # a bigger batch is sent as several messages (NATS takes 1 MB)
STALL_AFTER = 3 * RETRANSMIT_AFTER  # seconds without progress while messages wait: a stalled edge
log = logging.getLogger(__name__)


class BatchOut:
    """One message per micro-batch, closed by count or by time, whichever comes first;
    ``adaptive`` edges also close it as soon as no earlier batch is in flight (Nagle's rule:
    at a low rate each record goes at once, under load batches fill while one travels)."""

    def __init__(
        self, outputs: Outputs, binding: Binding, spool: Spool | None = None, limits: BatchSpec | None = None
    ) -> None:
        self.o = outputs
        self.topic = binding.topic
        limits = limits or binding.batch
        self.count = limits.count if limits else 100
        self.seconds = limits.seconds if limits else 1.0
        self.adaptive = limits.adaptive if limits else False
        self._inflight: asyncio.Future[None] | None = None  # the last batch, until the broker has it
        self.pending: list[tuple[int, Any]] = []
        self.unconfirmed = Unconfirmed()
        self.box = Outbox(outputs, binding.topic, self.unconfirmed, spool)
        self.traced: dict[str, str] | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._barrier: asyncio.Future[None] | None = None

    def add(self, seq: int, record: Any) -> None:
        if self.traced is None:
            self.traced = carried()  # the batch carries the trace of a sampled record in it
        if not self.pending:
            loop = asyncio.get_running_loop()
            self._timer = loop.call_later(self.seconds, self.close)
            self._barrier = loop.create_future()
            if self.adaptive:  # after what the task is doing now: it may add more first
                loop.call_soon(self._close_when_idle)
        self.pending.append((seq, record))
        if len(self.pending) >= self.count:
            self.close()

    def barrier(self) -> asyncio.Future[None] | None:
        """Resolved once the batch open now is published and acknowledged."""
        return self._barrier

    def _close_when_idle(self) -> None:
        """Adaptive: close the open batch now if nothing is in flight, else once the batch in
        flight is acknowledged (the timer and the count still close it earlier)."""
        if not self.pending:
            return
        inflight = self._inflight
        if inflight is None or inflight.done():
            self.close()
        else:
            inflight.add_done_callback(lambda _: self._close_when_idle())

    def close(self) -> None:
        """Publish the open batch (if any)."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if not self.pending:
            return
        batch, self.pending = self.pending, []
        barrier, self._barrier = self._barrier, None
        traced, self.traced = self.traced, None
        # kept until the consumer confirms it, like a stream's records: a batch published
        # before the consumer subscribed (or lost) is sent again when it asks
        fut = self._send(batch, traced)
        self._inflight = fut
        if barrier is not None:
            _chain(fut, barrier)

    def _send(self, batch: list[tuple[int, Any]], traced: dict[str, str] | None) -> asyncio.Future[None]:
        """Publish ``batch`` as one message, or as several when that would be too big for a
        broker (halves, until each fits or holds one record); the last one's future."""
        payload = encode_records(self.o.producer, self.o.generation, batch)
        if len(payload) > MAX_MESSAGE_BYTES and len(batch) > 1:
            half = len(batch) // 2
            self._send(batch[:half], traced)
            return self._send(batch[half:], None)
        self.o.count(self.topic, len(payload))
        fut = self.box.send(batch[0][0], batch[-1][0], len(batch), payload, traced)
        self.o.track(fut)
        return fut


class StreamOut(BatchOut):
    """A stream edge: each record goes as soon as the task is done with what it has in hand,
    unless a message of the edge is still in flight; the records that come meanwhile travel
    together in the next message (transparent coalescing, Nagle's rule: at a low rate one
    record per message, under load the broker round trip, the acknowledgement, the
    consumer's progress and dedupe are paid per message, not per record). At most
    ``COALESCE_RECORDS`` records per message, none held longer than ``COALESCE_LINGER``."""

    def __init__(self, outputs: Outputs, binding: Binding, spool: Spool | None = None) -> None:
        super().__init__(outputs, binding, spool, STREAM_LIMITS)


def _chain(src: asyncio.Future[None], dst: asyncio.Future[None]) -> None:
    def done(f: asyncio.Future[None]) -> None:
        if dst.done():
            return
        if f.cancelled() or f.exception() is not None:
            dst.set_exception(f.exception() or asyncio.CancelledError())
            dst.exception()  # retrieved: the ack queue looks at the outcome itself
        else:
            dst.set_result(None)

    src.add_done_callback(done)


class Outputs:
    def __init__(
        self,
        mqtt: Transport,
        producer: str,
        generation: int,
        bindings: list[Binding],
        names: Names,
        *,
        start_seq: int = 0,
        window: int = DEFAULT_WINDOW,
        tail: dict[str, list[tuple[int, str]]] | None = None,
        spools: SpoolSettings | None = None,
    ) -> None:
        self.mqtt = mqtt
        self.names = names
        self.producer = producer
        self.generation = generation
        self.seq = start_seq
        self.emitted = 0
        self.window = window
        self.published: list[asyncio.Future[None]] = []
        self._unsafe: set[asyncio.Future[None]] = set()  # publishes the broker has not acknowledged
        self.channels: list[StreamOut | BatchOut | FileSender] = []
        self.files: list[FileSender] = []
        self.boxes: list[Outbox] = []
        self.peers = {b.topic: b.peer for b in bindings}
        for b in bindings:
            if b.model is EdgeModel.file:
                sender = FileSender(mqtt, producer, generation, b.topic)
                self.channels.append(sender)
                self.files.append(sender)
                continue
            spool = spools.spool_for(b) if spools is not None else None
            if spool is not None:
                # what a previous copy here spooled up to where this one starts; later
                # records this copy emits again
                spool.open(keep_through=start_seq)
            out = BatchOut(self, b, spool) if b.model is EdgeModel.batch else StreamOut(self, b, spool)
            self.channels.append(out)
            self.boxes.append(out.box)
        self.resend_topics = {
            names.resend_topic(b.topic): c for b, c in zip(bindings, self.channels, strict=True)
        }
        self.heard: dict[str, float] = {}  # channel topic -> when its consumer last reported
        self.heard_from: set[str] = set()
        self.eos_seen: dict[str, bool] = {b.topic: False for b in bindings}
        self.retransmitted = 0
        # channel topic -> [messages, bytes, retransmits] sent by this copy (metrics)
        self.counts: dict[str, list[int]] = {b.topic: [0, 0, 0] for b in bindings}
        self._watchdog: asyncio.Task[None] | None = None
        self._resending: dict[str, asyncio.Task[None]] = {}
        # progress topic -> the consumer's high-water mark of our records
        self.progress_topics = {names.progress_topic(b.topic): b for b in bindings}
        self.acked: dict[str, int] = dict.fromkeys(self.progress_topics, start_seq)
        # channel topic -> the newest generation of its consumer heard from: an older copy's
        # reports are ignored, a newer copy's first report may go back (it restored a checkpoint)
        self.consumer_generation: dict[str, int] = {}
        self._resend_from: dict[str, int] = {}  # channel topic -> first seq of the resend under way
        self._moved_at: dict[str, float] = {}  # channel topic -> when its consumer last confirmed more
        self.stalled: dict[str, str] = {}  # channel topic -> why it is stalled (while it is)
        self._sender_of = {
            names.progress_topic(b.topic): c for b, c in zip(bindings, self.channels, strict=True)
        }
        self._credit = asyncio.Event()
        for ch in self.channels:  # a drained predecessor's unconfirmed messages: ours to resend
            kept = (tail or {}).get(ch.topic)
            if kept and not isinstance(ch, FileSender):
                for last, payload in kept:
                    ch.unconfirmed.add(last, restamp(base64.b64decode(payload), generation))
                self.acked[names.progress_topic(ch.topic)] = min(start_seq, kept[0][0] - 1)

    def count(self, topic: str, size: int) -> None:
        c = self.counts[topic]
        c[0] += 1
        c[1] += size

    def channel_counts(self) -> dict[str, ChannelCounts]:
        """Per consuming task: what this copy sent it (file channels count their chunks)."""
        out: dict[str, ChannelCounts] = {}
        for ch in self.channels:
            messages, size, again = self.counts[ch.topic]
            spooled = on_disk = dropped = 0
            if isinstance(ch, FileSender):
                messages, size = ch.chunks_sent, ch.bytes_sent
            else:
                spooled, on_disk, dropped = ch.box.counts()
            out[self.peers[ch.topic]] = ChannelCounts(
                transport="nats" if self.names.is_subject(ch.topic) else "mqtt",
                messages=messages,
                bytes=size,
                retransmits=again,
                spooled=spooled,
                spool_bytes=on_disk,
                dropped=dropped,
            )
        return out

    def subscriptions(self) -> list[str]:
        """What the producer side listens to: progress reports and resend requests."""
        return [*self.progress_topics, *self.resend_topics]

    # ---------------------------------------------------------------- emitting

    def emit(self, record: Any) -> None:
        self.seq += 1
        self.emitted += 1
        for ch in self.channels:
            ch.add(self.seq, record)

    def emit_all(self, records: Iterable[Any] | None) -> None:
        if records is not None:
            for r in records:
                self.emit(r)

    def track(self, fut: asyncio.Future[None]) -> None:
        """A publish of records: acknowledged inputs and checkpoints wait for it."""
        self.published.append(fut)
        if not fut.done():
            self._unsafe.add(fut)
            fut.add_done_callback(self._unsafe.discard)

    def unsafe(self) -> list[asyncio.Future[None]]:
        """Futures that resolve once everything emitted so far is safe at the broker; unlike
        ``flush()`` it takes nothing away (a checkpoint waits for them beside the acks)."""
        futs = list(self._unsafe)
        for ch in self.channels:
            barrier = ch.barrier()
            if barrier is not None:
                futs.append(barrier)
        return futs

    def flush(self) -> list[asyncio.Future[None]]:
        """Futures that resolve once everything emitted so far is safe at the broker."""
        futs, self.published = self.published, []
        for ch in self.channels:
            barrier = ch.barrier()
            if barrier is not None:
                futs.append(barrier)
        return futs

    async def end_of_stream(self) -> None:
        """Close open batches, send every queued file, then end-of-stream on every channel,
        and return once every consumer confirmed all of it (retransmitting what got lost)."""
        for ch in self.channels:
            ch.close()
        payload = encode_eos(self.producer, self.generation, self.seq)
        for ch in self.channels:
            if isinstance(ch, FileSender):
                await ch.drain(None)
            ch.unconfirmed.eos = payload
            self.published.append(self.mqtt.publish(ch.topic, payload, qos=1))
        await asyncio.gather(*self.flush())
        while not self.delivered:
            self._credit.clear()
            await self._credit.wait()

    async def settle(self, timeout: float) -> None:
        """For a move: publish open batches and queued files, and wait until the broker has
        every message. Records the consumers did not confirm yet travel in the snapshot
        (``tail``) to the next copy; a file channel still waits for its consumer."""
        for ch in self.channels:
            ch.close()
        for sender in self.files:
            await sender.drain(timeout)
        await asyncio.wait_for(asyncio.gather(*self.flush()), timeout)
        if not self.files and not any(b.engaged for b in self.boxes):
            return

        async def confirmed() -> None:
            while self.ahead > 0 or any(b.engaged for b in self.boxes):
                self._credit.clear()
                await self._credit.wait()

        await asyncio.wait_for(confirmed(), timeout)

    def tail(self) -> dict[str, list[tuple[int, str]]]:
        """What the consumers did not confirm yet, per channel (for the next copy)."""
        return {
            ch.topic: [(last, base64.b64encode(p).decode()) for last, p, _ in ch.unconfirmed.msgs]
            for ch in self.channels
            if not isinstance(ch, FileSender) and ch.unconfirmed.msgs
        }

    @property
    def delivered(self) -> bool:
        """Every consumer has every record and the end of stream."""
        return all(self.eos_seen.values()) and self.ahead == 0

    async def start(self) -> None:
        for sender in self.files:
            sender.start()
        for box in self.boxes:
            box.kick()  # what a previous copy here left in the spool
        self._watchdog = asyncio.create_task(self._retransmit_stale(), name=f"retransmit-{self.producer}")

    async def stop(self) -> None:
        for task in (self._watchdog, *self._resending.values()):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        for ch in self.channels:
            if isinstance(ch, BatchOut) and ch._timer is not None:
                ch._timer.cancel()
        for sender in self.files:
            await sender.stop()

    async def close_spools(self, *, remove: bool) -> None:
        """Close the channels' spools; ``remove``: the task is gone for good here."""
        for box in self.boxes:
            await box.close(remove=remove)

    @property
    def spooling(self) -> bool:
        """Every channel keeps its messages in its spool (its broker is, or was, out of reach):
        whatever this task emitted is confirmed, acknowledged by the broker, or in a spool. With
        some channels publishing directly, a checkpoint must wait for the broker as usual."""
        # (a channel whose link is down spools what it sends next: the open batches too)
        return bool(self.boxes) and all(
            b.engaged or (b.spool is not None and not b.link_up()) for b in self.boxes
        )

    def close_batches(self) -> None:
        for ch in self.channels:
            if isinstance(ch, BatchOut):  # stream edges too: what they gather
                ch.close()

    def sync_spools(self) -> None:
        for box in self.boxes:
            box.sync()

    def resend(self, ch: StreamOut | BatchOut | FileSender, seq: int, why: str) -> None:
        if isinstance(ch, FileSender):
            ch.resend_from(seq, why)
            if ch.unconfirmed.eos is not None and not ch.records:
                self.published.append(self.mqtt.publish(ch.topic, ch.unconfirmed.eos, qos=1))
            return
        running = self._resending.get(ch.topic)
        if running is not None and not running.done() and self._resend_from.get(ch.topic, seq + 1) <= seq:
            # a resend that covers it is under way: restarting it at every request (they come
            # each second while a long gap fills) would never let it finish
            return
        again = ch.unconfirmed.since(seq)
        if not again:
            return
        log.info(
            "%s -> %s: sending %d message(s) again from seq %d (%s)",
            self.producer,
            ch.topic,
            len(again),
            seq,
            why,
        )
        self.retransmitted += len(again)
        self.counts[ch.topic][2] += len(again)
        if running is not None and not running.done():
            running.cancel()  # a request from further back supersedes it (go-back-N)
        self._resend_from[ch.topic] = seq
        self._resending[ch.topic] = asyncio.create_task(self._send_again(ch.topic, again))

    async def _send_again(self, topic: str, messages: list[tuple[bytes, dict[str, str] | None]]) -> None:
        """Publish again at the pace the broker takes it (never beyond the publish window)."""
        for payload, props in messages:
            await self.mqtt.wait_for_window()
            self.mqtt.publish(topic, payload, qos=1, user_properties=props)

    async def _retransmit_stale(self) -> None:
        """Send unconfirmed messages again when a consumer has been silent for a while."""
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(RETRANSMIT_AFTER / 2)
            self.check_channels(loop.time())

    def check_channels(self, now: float) -> None:
        """One round of the watchdog (``now``: the event loop's clock): name the edges that
        stopped moving, send again what a silent consumer did not confirm."""
        for ch in self.channels:
            if not ch.unconfirmed and not (isinstance(ch, FileSender) and ch.records):
                self._moved_at.pop(ch.topic, None)
                self.stalled.pop(ch.topic, None)
                continue
            still = now - self._moved_at.setdefault(ch.topic, now)
            if still >= STALL_AFTER:
                waiting = len(ch.unconfirmed.msgs) if not isinstance(ch, FileSender) else len(ch.records)
                why = (
                    f"edge {self.producer} -> {self.peers.get(ch.topic, ch.topic)} stalled: nothing "
                    f"confirmed for {still:.0f} s, {waiting} message(s) waiting (resending)"
                )
                if ch.topic not in self.stalled:
                    log.warning("%s", why)
                self.stalled[ch.topic] = why
            last = self.heard.get(ch.topic)
            if last is None:
                self.heard[ch.topic] = now
            elif now - last >= RETRANSMIT_AFTER:
                self.heard[ch.topic] = now
                self.resend(ch, self.acked_of(ch) + 1, f"no report for {RETRANSMIT_AFTER:g}s")

    def acked_of(self, ch: StreamOut | BatchOut | FileSender) -> int:
        for topic, c in self._sender_of.items():
            if c is ch:
                return self.acked[topic]
        return 0

    # ---------------------------------------------------------------- credit

    def on_control(self, msg: MqttMessage) -> None:
        """A consumer's progress report (retained) or resend request arrived."""
        if not msg.payload:
            return
        if msg.topic in self.resend_topics:
            try:
                req = ResendRequest.from_bytes(msg.payload)
            except ValidationError:
                return
            if req.producer == self.producer:
                self.resend(self.resend_topics[msg.topic], req.seq, req.reason)
            return
        if msg.topic not in self.acked:
            return
        try:
            report = ChannelProgress.from_bytes(msg.payload)
        except ValidationError:
            return
        if report.producer != self.producer:
            return
        ch = self._sender_of[msg.topic]
        seen = self.consumer_generation.get(ch.topic)
        if seen is not None and report.generation < seen:
            log.debug(
                "%s -> %s: ignoring a report of consumer generation %d (%d seen)",
                self.producer,
                ch.topic,
                report.generation,
                seen,
            )
            return
        newer = seen is not None and report.generation > seen
        self.consumer_generation[ch.topic] = report.generation
        first = ch.topic not in self.heard_from
        self.heard_from.add(ch.topic)
        self.heard[ch.topic] = asyncio.get_running_loop().time()
        if isinstance(ch, FileSender):
            if newer:
                ch.hwm = min(ch.hwm, report.hwm)
            ch.on_progress(report)
        ch.unconfirmed.confirm(report.hwm, report.eos)
        if not isinstance(ch, FileSender):
            ch.box.release(report.hwm)
        self.eos_seen[ch.topic] = report.eos
        if report.hwm > self.acked[msg.topic] or newer:
            self._moved_at[ch.topic] = asyncio.get_running_loop().time()
            if self.stalled.pop(ch.topic, None) is not None:
                log.warning("edge %s -> %s moves again", self.producer, self.peers.get(ch.topic, ch.topic))
            # a newer copy of the consumer (moved, or restored from a checkpoint) may stand
            # before what its predecessor confirmed: what it lacks was kept for it
            self.acked[msg.topic] = report.hwm
        self._credit.set()
        if newer and report.replay:
            # restored from a checkpoint: what came after it was taken (and acknowledged to
            # the broker) by the copy that is gone; we kept it for this one
            self.resend(ch, report.hwm + 1, f"consumer generation {report.generation}")
        elif (
            first
            and not isinstance(ch, FileSender)
            and ch.unconfirmed
            and not self.names.is_subject(ch.topic)
        ):
            # MQTT: what we published before this consumer subscribed went to nobody (a NATS
            # channel's work queue keeps it): send it again
            self.resend(ch, report.hwm + 1, "consumer subscribed")

    @property
    def ahead(self) -> int:
        """Records emitted beyond what the slowest consumer has processed."""
        return self.seq - min(self.acked.values(), default=self.seq)

    async def wait_window(self) -> None:
        """Block while too many publishes are unacknowledged or consumers lag a window behind;
        with spools, while a channel's broker is out of reach, only while a ``block`` spool
        is full."""
        if not self.boxes or self.boxes[0].spool is None:
            await self.mqtt.wait_for_window()
            while self.ahead >= self.window:
                self._credit.clear()
                await self._credit.wait()
            return
        while True:
            if any(b.engaged or not b.link_up() for b in self.boxes):
                if all(b.link_up() for b in self.boxes) and self.ahead >= self.window:
                    # the spool drains with the link up: a producer faster than its consumer
                    # waits for credit as usual instead of spooling on (the link may drop
                    # again meanwhile: look at it now and then)
                    self._credit.clear()
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(LINK_POLL):
                            await self._credit.wait()
                    continue
                while any(b.blocked for b in self.boxes):  # room comes with the consumers' progress
                    self._credit.clear()
                    with contextlib.suppress(TimeoutError):  # ... or with age
                        async with asyncio.timeout(1.0):
                            await self._credit.wait()
                return
            if not self.mqtt.window_full and self.ahead < self.window:
                return
            try:  # wait for the broker and the consumers, but look at the link now and then
                async with asyncio.timeout(LINK_POLL):
                    await self.mqtt.wait_for_window()
                    while self.ahead >= self.window:
                        self._credit.clear()
                        await self._credit.wait()
                return
            except TimeoutError:
                continue

    async def wait_credit(self, topic: str, last: int) -> None:
        """A spool's drainer: wait until the consumer of ``topic`` is less than a window behind
        ``last``."""
        progress = self.names.progress_topic(topic)
        while last - self.acked.get(progress, last) >= self.window:
            self._credit.clear()
            await self._credit.wait()
