"""The consumer side of a task's channels: what it took, what it reports, what it acks.

- ``Inputs`` drops records already seen (one high-water mark per producer: a channel
  delivers one producer's records in order, at least once) and tracks end of stream.
- ``Progress`` reports the consumer's high-water mark per producer on the channel's
  retained progress topic (credit and confirmation for the producer; with checkpoints,
  no further than the latest published checkpoint).
- ``AckQueue`` acknowledges an input message only once the outputs it caused are safe at
  the broker, in the order messages arrived (MQTT requires it).

The producer side (``Outputs``) is in ``channels``.
"""

from __future__ import annotations

import asyncio
import collections
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from echo_shared.codec import Decoded
from echo_shared.messages import ChannelProgress
from echo_shared.mqtt import MqttMessage

from .transports import Transport


class Gap(Exception):
    def __init__(self, producer: str, expected: int, got: int) -> None:
        super().__init__(f"records {expected}..{got - 1} of {producer} missing")
        self.producer = producer
        self.expected = expected


class Inputs:
    def __init__(self, producers: Iterable[str], hwm: dict[str, int] | None = None) -> None:
        self.producers = set(producers)
        self.hwm: dict[str, int] = dict(hwm or {})
        self.eos: dict[str, int] = {}
        self.duplicates = 0
        self.skipped = 0  # records the producers' spools dropped (told by skip messages)

    def fresh(self, decoded: Decoded) -> list[Any]:
        """The payloads of ``decoded`` not seen before, in order.

        Raises ``Gap`` when the message starts beyond the next expected seq (records were
        lost on the way): nothing of it is taken, and the caller asks for a resend.
        """
        last = self.hwm.get(decoded.producer, 0)
        if decoded.records and decoded.records[0][0] > last + 1:
            raise Gap(decoded.producer, last + 1, decoded.records[0][0])
        if decoded.skip_from is not None and decoded.last_seq is not None and not decoded.records:
            # the producer's spool dropped these records: nothing will fill the gap
            if decoded.skip_from > last + 1:
                raise Gap(decoded.producer, last + 1, decoded.skip_from)
            if decoded.last_seq > last:
                self.skipped += decoded.last_seq - last
                self.hwm[decoded.producer] = decoded.last_seq
            return []
        if decoded.eos and decoded.last_seq is not None:
            self.eos[decoded.producer] = decoded.last_seq  # done once every record up to it is in
        out: list[Any] = []
        for seq, payload in decoded.records:
            if seq <= last:
                self.duplicates += 1
                continue
            last = seq
            out.append(payload)
        self.hwm[decoded.producer] = last
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
    File channels also report the position within the file being received, every
    ``FILE_STEP`` bytes. With checkpoints on, the reported mark stops at ``gate`` (the hwm
    of the task's latest published checkpoint); every report carries the copy's generation.
    """

    FILE_STEP = 1 << 20
    INTERVAL = 0.5  # report at least this often while moving: silence means stuck
    CAUGHT_UP_GAP = 0.05  # when caught up, report at most this often (a slow stream: not per message)

    def __init__(
        self,
        mqtt: Transport,
        consumer: str,
        topics: dict[str, str],
        step: int,
        *,
        generation: int = 0,
        gate: dict[str, int] | None = None,
        replay: bool = True,
    ) -> None:
        self.mqtt = mqtt
        self.consumer = consumer
        self.replay = replay
        self.topics = topics  # producer -> progress topic
        self.step = max(1, step)
        self.generation = generation
        # checkpointing: report at most the hwm of the latest published checkpoint, so the
        # producers keep the rest for a copy restored from it (None: report everything)
        self.gate = gate
        self.reported: dict[str, tuple[int, int, int, bool]] = {}
        self._last_at: dict[str, float] = {}
        self.unreported = False

    def maybe_report(
        self,
        hwm: dict[str, int],
        caught_up: bool,
        files: dict[str, tuple[int, int]] | None = None,
        eos: dict[str, int] | None = None,
        force: bool = False,
    ) -> list[asyncio.Future[None]]:
        """Report where the consumer is, when it moved enough (or ``force``: the producer
        is resending what we have, so our last report may have been lost)."""
        sent: list[asyncio.Future[None]] = []
        loop_now = time.monotonic()
        for producer, topic in self.topics.items():
            mark = hwm.get(producer, 0)
            if self.gate is not None:
                mark = min(mark, self.gate.get(producer, 0))
            file_seq, file_offset = (files or {}).get(producer, (0, 0))
            ended = producer in (eos or {}) and mark >= (eos or {})[producer]
            now = (mark, file_seq, file_offset, ended)
            last = self.reported.get(producer, (0, 0, 0, False))
            since = loop_now - self._last_at.get(producer, 0.0)
            due = (
                (caught_up and since >= self.CAUGHT_UP_GAP)
                or since >= self.INTERVAL
                or mark - last[0] >= self.step
                or file_seq != last[1]
                or file_offset - last[2] >= self.FILE_STEP
                or ended != last[3]
            )
            if now != last and not due:
                self.unreported = True  # the consumer loop reports it soon (flush_due)
            if force or (now != last and due):
                report = ChannelProgress(
                    consumer=self.consumer,
                    producer=producer,
                    hwm=mark,
                    ts=time.time(),
                    file_seq=file_seq,
                    file_offset=file_offset,
                    eos=ended,
                    generation=self.generation,
                    replay=self.replay,
                )
                sent.append(self.mqtt.publish(topic, report.to_bytes(), qos=1, retain=True))
                self.reported[producer] = now
                self._last_at[producer] = loop_now
        return sent

    def flush_due(
        self, hwm: dict[str, int], files: dict[str, tuple[int, int]] | None, eos: dict[str, int] | None
    ) -> None:
        """Report what moved since the last report (called when the consumer is idle)."""
        self.unreported = False
        for producer in self.topics:
            self._last_at[producer] = 0.0  # due now
        self.maybe_report(hwm, caught_up=True, files=files, eos=eos)

    def announce(self, hwm: dict[str, int]) -> list[asyncio.Future[None]]:
        """Report at once, as soon as the task subscribed: tells each producer we are here
        (and where we are), so it sends again what it published before we subscribed."""
        return self.maybe_report(hwm, caught_up=True, force=True)

    def clear(self) -> list[asyncio.Future[None]]:
        """Remove the retained reports (the channel is gone for good)."""
        return [self.mqtt.publish(t, b"", qos=1, retain=True) for t in self.topics.values()]


class AckQueue:
    """Acknowledge input messages in arrival order, each once its outputs are safe."""

    def __init__(self, mqtt: Transport) -> None:
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

    def __len__(self) -> int:
        return len(self._queue)

    async def drain(self, timeout: float) -> None:
        await asyncio.wait_for(self.empty.wait(), timeout)


def incoming_dir(data_dir: Path) -> Path:
    return data_dir / "incoming"
