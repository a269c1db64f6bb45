"""Intake of agent registrations, heartbeats and goodbyes from MQTT.

The MQTT callback only enqueues (bounded; when full, the oldest heartbeat is dropped
and counted: a later heartbeat carries the same information). One worker applies the
messages to Redis in order and acknowledges registrations once stored; the heartbeats at
the head of the queue go to Redis together, one round trip per batch (1,000 devices at 1 Hz
cost the registry a fraction of a core, not one round trip each).
"""

from __future__ import annotations

import asyncio
import collections
import logging
import time
from collections.abc import Callable

from prometheus_client import Histogram
from pydantic import ValidationError

from echo_shared.messages import DeviceHello, Goodbye, Heartbeat
from echo_shared.models import DeviceStatus, TaskState
from echo_shared.mqtt import MqttClient, MqttMessage
from echo_shared.names import Names
from echo_shared.outage import Outage, dependency_of
from echo_shared.telemetry import extract, tracer

from .errors import DeviceRevoked, UnknownDevice
from .events import DeviceEvents
from .store import Beat, DeviceStore

log = logging.getLogger(__name__)

MAX_QUEUED = 10_000
BATCH = 500  # heartbeats written in one Redis round trip


class Intake:
    def __init__(
        self, store: DeviceStore, events: DeviceEvents, names: Names, lag: Histogram | None = None
    ) -> None:
        self.store = store
        self.lag = lag  # heartbeat sent -> stored
        self.events = events
        self.names = names
        self.mqtt: MqttClient | None = None
        self._queue: collections.deque[MqttMessage] = collections.deque()
        self._wake = asyncio.Event()
        self.dropped_heartbeats = 0
        self.outage = Outage("registry intake: a dependency", log)
        self._tracer = tracer("echo.registry")
        # with replicas, only the leader takes what devices say. A standby acknowledges
        # heartbeats unread (the leader has them too: every replica has a session of its
        # own) and keeps hellos and goodbyes, unacknowledged, for when it is elected (a
        # retained hello arrives at subscription, before the first election)
        self.leading: Callable[[], bool] = lambda: True
        self._held: collections.deque[MqttMessage] = collections.deque(maxlen=MAX_QUEUED)

    def topics(self) -> list[str]:
        return [self.names.any_device_topic(leaf) for leaf in ("hello", "hb", "bye")]

    def on_message(self, msg: MqttMessage) -> None:
        if not self.leading():
            if not msg.topic.endswith("/hb"):
                self._held.append(msg)
            elif self.mqtt is not None:
                self.mqtt.ack(msg)
            return
        if len(self._queue) >= MAX_QUEUED:
            for i, queued in enumerate(self._queue):
                if queued.topic.endswith("/hb"):
                    del self._queue[i]
                    self.dropped_heartbeats += 1
                    break
        self._queue.append(msg)
        self._wake.set()

    def elected(self) -> None:
        """This replica leads now: take the hellos and goodbyes it kept."""
        while self._held:
            self._queue.append(self._held.popleft())
        self._wake.set()

    async def run(self, stop: asyncio.Event) -> None:
        while not (stop.is_set() and not self._queue):
            if not self._queue:
                self._wake.clear()
                stopper = asyncio.ensure_future(stop.wait())
                waker = asyncio.ensure_future(self._wake.wait())
                await asyncio.wait({stopper, waker}, return_when=asyncio.FIRST_COMPLETED)
                stopper.cancel()
                waker.cancel()
                continue
            if self._queue[0].topic.endswith("/hb"):
                await self._heartbeats()
                continue
            msg = self._queue.popleft()
            try:
                await self.handle(msg)
            except ValidationError as e:
                log.warning("dropping malformed message on %s: %s", msg.topic, e.errors()[:3])
            except Exception as e:
                if dependency_of(e) is None:
                    log.exception("failed to handle %s", msg.topic)
                else:
                    self.outage.failed(e)
                continue  # not acked: the broker redelivers registrations
            self.outage.ok()
            if self.mqtt is not None:
                self.mqtt.ack(msg)

    async def _heartbeats(self) -> None:
        """The heartbeats at the head of the queue, up to ``BATCH``, in one Redis round trip
        (a registration or goodbye behind them waits its turn: order per device holds)."""
        msgs: list[MqttMessage] = []
        while self._queue and len(msgs) < BATCH and self._queue[0].topic.endswith("/hb"):
            msgs.append(self._queue.popleft())
        beats: list[tuple[float, Beat]] = []
        for msg in msgs:
            try:
                hb = Heartbeat.from_bytes(msg.payload)
            except ValidationError as e:
                log.warning("dropping malformed message on %s: %s", msg.topic, e.errors()[:3])
                continue
            device = self.names.device_from_topic(msg.topic)
            beats.append(
                (
                    hb.ts,
                    Beat(device, time.time(), hb.cpu_percent, hb.memory_percent, active_tasks(hb), hb.rtt_ms),
                )
            )
        try:
            results = await self.store.heartbeats([b for _, b in beats]) if beats else []
            stored = time.time()
            for (sent, beat), prev in zip(beats, results, strict=True):
                if isinstance(prev, UnknownDevice):
                    log.debug("heartbeat from unregistered device %s", beat.device)
                    continue
                if self.lag is not None:
                    self.lag.observe(max(0.0, stored - sent))
                if prev is not None:
                    await self.events.changed(beat.device, DeviceStatus.online, prev, "heartbeat received")
        except Exception as e:
            if dependency_of(e) is None:
                log.exception("failed to handle %d heartbeats", len(beats))
            else:
                self.outage.failed(e)
            return  # heartbeats are not redelivered: the next ones carry the same news
        self.outage.ok()
        if self.mqtt is not None:
            for msg in msgs:
                self.mqtt.ack(msg)

    async def handle(self, msg: MqttMessage) -> None:
        leaf = msg.topic.rsplit("/", 1)[-1]
        device = self.names.device_from_topic(msg.topic)
        now = time.time()
        if leaf == "hello":
            if not msg.payload:
                return  # a cleared retained registration
            hello = DeviceHello.from_bytes(msg.payload)
            if hello.device.id != device:  # a device speaks only for itself (its ACL: its own topics)
                log.warning("dropping a registration of %s sent on %s's topic", hello.device.id, device)
                return
            with self._tracer.start_as_current_span("register device", context=extract(msg.user_properties)):
                try:
                    prev, prev_boot = await self.store.register(hello.device, hello.boot_id, now)
                except DeviceRevoked:
                    log.info("ignoring the registration of revoked device %s", device)
                    return
            restarted = prev_boot is not None and prev_boot != hello.boot_id
            if prev is not DeviceStatus.online:
                why = "agent restarted" if restarted else "registered"
                await self.events.changed(device, DeviceStatus.online, prev, why, restarted=restarted)
            elif restarted:
                # online all along, yet a new agent process: what ran there is gone
                await self.events.changed(
                    device, DeviceStatus.online, prev, "agent restarted", restarted=True
                )
        elif leaf == "bye":
            bye = Goodbye.from_bytes(msg.payload)
            raw = await self.store.raw(device)
            if not raw or raw.get("boot_id") != bye.boot_id:
                return  # the goodbye of an earlier incarnation
            prev = await self.store.transition(
                device, DeviceStatus.unreachable, now, expect=DeviceStatus.online
            )
            if prev is not None:
                await self.events.changed(device, DeviceStatus.unreachable, prev, bye.reason)


ACTIVE = {TaskState.pending, TaskState.deploying, TaskState.running, TaskState.stopping}


def active_tasks(hb: Heartbeat) -> int:
    """The tasks the device runs (finished, failed and stopped copies it still lists are not)."""
    return sum(1 for t in hb.tasks if t.state in ACTIVE)
