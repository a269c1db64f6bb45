"""The data plane of one task: outgoing channels, incoming deduplication, ordered acks.

- ``Outputs`` gives every record the task emits its id (``producer``, ``seq``; ``seq``
  grows by one per record and is part of the task's state), coalesces records into
  one message per channel (at most ``max_batch`` records), and publishes at QoS 1.
- ``Inputs`` drops records already seen (one high-water mark per producer: a channel
  delivers one producer's records in order, at least once) and tracks end of stream.
- ``AckQueue`` acknowledges an input message only after the outputs it caused are
  acknowledged by the broker, in the order messages arrived (MQTT requires it), so a
  crash anywhere loses nothing: unacknowledged input is redelivered.
"""

from __future__ import annotations

import asyncio
import collections
from collections.abc import Iterable
from typing import Any

from echo_shared.codec import Decoded, encode_eos, encode_records
from echo_shared.mqtt import MqttClient, MqttMessage


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
        await self.mqtt.wait_for_window()


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
