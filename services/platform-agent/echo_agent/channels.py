"""The data plane of one task: outgoing channels, incoming deduplication, ordered acks.

- ``Outputs`` gives every record the task emits its id (``producer``, ``seq``; ``seq``
  grows by one per record and is part of the task's state), coalesces records into
  one message per channel (at most ``max_batch`` records), and publishes at QoS 1.
- ``Inputs`` drops records already seen (one high-water mark per producer: a channel
  delivers one producer's records in order, at least once) and tracks end of stream.
- ``AckQueue`` acknowledges an input message only after the outputs it caused are
  acknowledged by the broker, in the order messages arrived (MQTT requires it), so a
  crash anywhere loses nothing: unacknowledged input is redelivered.
- Credit: each consumer reports its high-water mark per producer on the channel's
  retained progress topic (``Progress``); a producer never runs more than ``window``
  records ahead of its slowest consumer (``Outputs.wait_window`` blocks it), so what
  the broker queues for a channel is bounded, and back-pressure reaches the sources.
"""

from __future__ import annotations

import asyncio
import collections
import time
from collections.abc import Iterable
from typing import Any

from pydantic import ValidationError

from echo_shared.codec import Decoded, encode_eos, encode_records
from echo_shared.messages import ChannelProgress
from echo_shared.mqtt import MqttClient, MqttMessage

DEFAULT_WINDOW = 50_000


class Outputs:
    def __init__(
        self,
        mqtt: MqttClient,
        producer: str,
        generation: int,
        topics: list[str],
        *,
        max_batch: int = 500,
        start_seq: int = 0,
        window: int = DEFAULT_WINDOW,
        progress_topics: dict[str, str] | None = None,
    ) -> None:
        self.mqtt = mqtt
        self.producer = producer
        self.generation = generation
        self.topics = topics
        self.max_batch = max_batch
        self.seq = start_seq
        self.pending: list[tuple[int, Any]] = []
        self.emitted = 0
        self.has_pending = asyncio.Event()
        self.window = window
        # progress topic -> the consumer's high-water mark of our records
        self.progress_topics = dict(progress_topics or {})
        self.acked: dict[str, int] = dict.fromkeys(self.progress_topics, start_seq)
        self._credit = asyncio.Event()

    def on_progress(self, msg: MqttMessage) -> None:
        """A consumer's progress report (retained, QoS 0) arrived."""
        if msg.topic not in self.acked or not msg.payload:
            return
        try:
            report = ChannelProgress.from_bytes(msg.payload)
        except ValidationError:
            return
        if report.producer == self.producer and report.hwm > self.acked[msg.topic]:
            self.acked[msg.topic] = report.hwm
            self._credit.set()

    @property
    def ahead(self) -> int:
        """Records emitted beyond what the slowest consumer has processed."""
        return self.seq - min(self.acked.values(), default=self.seq)

    def emit(self, record: Any) -> None:
        self.seq += 1
        self.emitted += 1
        if not self.topics:
            return
        self.pending.append((self.seq, record))
        self.has_pending.set()

    def emit_all(self, records: Iterable[Any] | None) -> None:
        if records is not None:
            for r in records:
                self.emit(r)

    @property
    def full(self) -> bool:
        return len(self.pending) >= self.max_batch

    def flush(self) -> list[asyncio.Future[None]]:
        """Publish what is pending, in messages of at most ``max_batch`` records."""
        futs: list[asyncio.Future[None]] = []
        pending, self.pending = self.pending, []
        self.has_pending.clear()
        for i in range(0, len(pending), self.max_batch):
            payload = encode_records(self.producer, self.generation, pending[i : i + self.max_batch])
            futs.extend(self.mqtt.publish(t, payload, qos=1) for t in self.topics)
        return futs

    def end_of_stream(self) -> list[asyncio.Future[None]]:
        futs = self.flush()
        payload = encode_eos(self.producer, self.generation, self.seq)
        futs.extend(self.mqtt.publish(t, payload, qos=1) for t in self.topics)
        return futs

    async def wait_window(self) -> None:
        """Block while too many publishes are unacknowledged or consumers lag a window behind."""
        await self.mqtt.wait_for_window()
        while self.ahead >= self.window:
            self._credit.clear()
            await self._credit.wait()


class Inputs:
    def __init__(self, producers: Iterable[str], hwm: dict[str, int] | None = None) -> None:
        self.producers = set(producers)
        self.hwm: dict[str, int] = dict(hwm or {})
        self.eos: dict[str, int] = {}
        self.duplicates = 0

    def fresh(self, decoded: Decoded) -> list[Any]:
        """The payloads of ``decoded`` not seen before, in order."""
        last = self.hwm.get(decoded.producer, 0)
        out: list[Any] = []
        for seq, payload in decoded.records:
            if seq <= last:
                self.duplicates += 1
                continue
            last = seq
            out.append(payload)
        self.hwm[decoded.producer] = last
        if decoded.eos and decoded.last_seq is not None:
            self.eos[decoded.producer] = decoded.last_seq
        return out

    @property
    def done(self) -> bool:
        return bool(self.producers) and all(
            p in self.eos and self.hwm.get(p, 0) >= self.eos[p] for p in self.producers
        )


class Progress:
    """The consumer side of credit: report the high-water mark per input channel.

    Reports go out every ``step`` records, and whenever the consumer has caught up (its
    queue is empty), so a producer waiting for credit never waits on an idle consumer.
    """

    def __init__(self, mqtt: MqttClient, consumer: str, topics: dict[str, str], step: int) -> None:
        self.mqtt = mqtt
        self.consumer = consumer
        self.topics = topics  # producer -> progress topic
        self.step = max(1, step)
        self.reported: dict[str, int] = {}

    def maybe_report(self, hwm: dict[str, int], caught_up: bool) -> list[asyncio.Future[None]]:
        sent: list[asyncio.Future[None]] = []
        for producer, topic in self.topics.items():
            mark = hwm.get(producer, 0)
            last = self.reported.get(producer, 0)
            if mark > last and (caught_up or mark - last >= self.step):
                report = ChannelProgress(consumer=self.consumer, producer=producer, hwm=mark, ts=time.time())
                sent.append(self.mqtt.publish(topic, report.to_bytes(), qos=1, retain=True))
                self.reported[producer] = mark
        return sent

    def clear(self) -> list[asyncio.Future[None]]:
        """Remove the retained reports (the channel is gone for good)."""
        return [self.mqtt.publish(t, b"", qos=1, retain=True) for t in self.topics.values()]


class AckQueue:
    """Acknowledge input messages in arrival order, each once its outputs are safe."""

    def __init__(self, mqtt: MqttClient) -> None:
        self.mqtt = mqtt
        self._queue: collections.deque[tuple[MqttMessage, asyncio.Future[Any] | None]] = collections.deque()
        self.empty = asyncio.Event()
        self.empty.set()

    def add(self, msg: MqttMessage, futs: list[asyncio.Future[None]]) -> None:
        waiter: asyncio.Future[Any] | None = None
        if futs:
            waiter = asyncio.gather(*futs, return_exceptions=True)
            waiter.add_done_callback(lambda _f: self._pump())
        self._queue.append((msg, waiter))
        self.empty.clear()
        self._pump()

    def _pump(self) -> None:
        while self._queue:
            msg, waiter = self._queue[0]
            if waiter is not None and not waiter.done():
                return
            self._queue.popleft()
            failed = waiter is not None and any(isinstance(r, BaseException) for r in waiter.result())
            if not failed:  # outputs not safe: leave unacked, the broker redelivers on reconnect
                self.mqtt.ack(msg)
        self.empty.set()

    async def drain(self, timeout: float) -> None:
        await asyncio.wait_for(self.empty.wait(), timeout)
