"""NATS channels: a task's data plane over JetStream, behind the same interface as MQTT.

The scheduler gives an edge a NATS channel when both devices reach NATS. Then:

- records go to the subject ``{ns}.df.{dataflow}.{from}.{to}`` of the work-queue stream
  ``{NS}_DATA``: a message stays until the consuming task acknowledges it, even before
  that task first runs;
- the consuming task reads with a durable pull consumer named after the task and the edge
  (``Names.consumer_name``), so its position belongs to the task and follows it;
- progress reports (MQTT's retained messages) are entries of the key-value bucket
  ``{NS}_PROGRESS``, watched by the producer; resend requests are plain NATS messages on
  ``{ns}.dfctl...``, outside the data stream.
- after a reconnect (a NATS restart) every progress watch is made again: nats-py's
  ordered consumer behind a watch does not always survive the server's restart (its
  reset can fail while the server is away, and then the watch is silent for good), and a
  producer that never hears its consumer's progress stops at its credit window.
- the connection is a login shared with the agent's other tasks deployed with this one
  (``natslink``); when the server closes it for good a new one is opened, and every
  subscription is made again on it; acknowledgements go over whichever connection is
  current (an ack is a plain publish to the message's reply subject), so nothing fetched
  before is left pending.

``NatsChannels`` offers what ``channels``/``consuming``/``files`` use of ``MqttClient``
(``publish``, ``subscribe``, ``ack``, ``wait_for_window``, ``window_full``, ``close``),
and delivers ``MqttMessage`` objects whose ``source`` is this client, so acks find their way.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from typing import Any

import nats
from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig
from nats.js.errors import BadRequestError, NotFoundError
from nats.js.kv import KeyValue

from echo_shared.mqtt import MqttMessage
from echo_shared.names import Names
from echo_shared.outage import Backoff, Outage

from .natslink import NatsLink, NatsLogins, NatsUnavailable
from .recordtrace import TRACEPARENT

log = logging.getLogger(__name__)

FETCH_BATCH = 64
FETCH_WAIT = 0.5  # seconds a pull waits for messages when there are none (also: close's wait)
CONSUMER_CHECK_EVERY = 5.0  # seconds of empty fetches before a reader checks its consumer is there
ACK_WAIT = 60.0  # seconds JetStream waits for an ack before redelivering (acks wait for outputs)
PUBLISH_TIMEOUT = 2.0  # seconds a JetStream publish waits for the stream's ack before trying again


class NatsChannels:
    """A task's NATS channels, over a login of ``logins`` begun at ``since`` or later (the
    loop time the task's command arrived; None: now) or ahead of that command, ``cmd_id``
    (``NatsLogins``)."""

    def __init__(
        self,
        logins: NatsLogins,
        names: Names,
        client_name: str,
        on_message: Callable[[MqttMessage], None],
        *,
        since: float | None = None,
        cmd_id: str | None = None,
        window: int = 100,
        max_ack_pending: int = 1000,
    ) -> None:
        self.logins = logins
        self._since = since
        self._cmd_id = cmd_id
        self.names = names
        self.client_name = client_name
        self._on_message = on_message
        self._window = window
        self._max_ack_pending = max_ack_pending
        self._link: NatsLink | None = None
        self._pending: set[asyncio.Future[None]] = set()
        self._window_free = asyncio.Event()
        self._window_free.set()
        self._tasks: list[asyncio.Task[None]] = []
        self._inflight: dict[int, Msg] = {}
        self._next_id = 0
        self._durables: list[str] = []
        self._subs: list[Any] = []
        self._pull_subs: dict[str, Any] = {}  # topic -> its pull subscription
        self._watchers: dict[str, tuple[Any, asyncio.Task[None]]] = {}  # progress topic -> watch
        self._pulls: list[asyncio.Task[None]] = []
        self.taken_over = asyncio.Event()  # never set: JetStream has no session takeover
        self._closing = False
        self._topics: list[str] = []  # everything subscribed (a new connection subscribes again)
        self._outage = Outage(f"nats data publishes of {client_name}", log)
        self.epoch = 1

    # ------------------------------------------------------------------ lifecycle

    @property
    def _nc(self) -> NatsClient | None:
        return self._link.nc if self._link is not None else None

    @property
    def _js(self) -> JetStreamContext | None:
        return self._link.js if self._link is not None else None

    @property
    def _kv(self) -> KeyValue | None:
        return self._link.kv if self._link is not None else None

    async def start(self, timeout: float = 10.0) -> None:
        since = self._since if self._since is not None else asyncio.get_running_loop().time()
        self._link = await self.logins.acquire(self, since, timeout, self._cmd_id)

    async def relinked(self) -> None:
        """A new connection replaced one the server closed: the old one's pulls and watches
        are gone; make every subscription again."""
        if self._closing:
            return
        await self._drop_subscriptions()  # on the closed connection: only the reads to cancel
        self._durables = []
        try:
            await self.subscribe(list(self._topics), remember=False)
        finally:
            if self._closing:  # closed meanwhile: what was just made is nobody's
                await self._drop_subscriptions()

    async def _drop_subscriptions(self) -> None:
        """Cancel the reads and end every subscription on the shared connection."""
        for t in self._tasks:
            t.cancel()
        for w, _ in self._watchers.values():
            with contextlib.suppress(Exception):
                await w.stop()
        for sub in [*self._subs, *self._pull_subs.values()]:
            with contextlib.suppress(Exception):
                await sub.unsubscribe()
        self._tasks, self._pulls, self._subs, self._watchers, self._pull_subs = [], [], [], {}, {}

    async def close(self, *, discard_session: bool = False, timeout: float = 2.0) -> None:
        self._closing = True
        # let pulls finish the fetch they are in (FETCH_WAIT at most, less under load):
        # messages of a fetch cancelled mid-flight are delivered to nobody and stay pending
        # for ACK_WAIT, and enough of them (a few moves) stop the durable at max_ack_pending
        pulls = [t for t in self._pulls if not t.done()]
        if pulls:
            await asyncio.wait(pulls, timeout=FETCH_WAIT + 0.5)
        pending = [t for t in self._tasks if not t.done()]
        for _ in range(10):  # nats-py's fetch may swallow a cancellation (wait_for on 3.11): insist
            if not pending:
                break
            for t in pending:
                t.cancel()
            _, still = await asyncio.wait(pending, timeout=0.5)
            pending = list(still)
        self._tasks.clear()
        link, self._link = self._link, None
        if link is None:
            return
        try:
            await self._let_go(link, discard_session, timeout)
        finally:
            await self.logins.release(link, self)

    async def _let_go(self, link: NatsLink, discard_session: bool, timeout: float) -> None:
        """Give back what this task holds on the shared connection."""
        nc = link.nc
        if nc is None:
            return
        if discard_session and link.js is not None:
            for durable in self._durables:  # the task is gone for good: so is its position
                with contextlib.suppress(Exception):
                    await link.js.delete_consumer(self.names.data_stream, durable)
        elif self._inflight:
            # fetched but not acknowledged (not processed, or outputs not yet safe): give them
            # back at once, for the next copy; left alone they would block the durable for
            # ACK_WAIT once max_ack_pending of them piled up over a few moves
            unacked, self._inflight = list(self._inflight.values()), {}
            with contextlib.suppress(Exception):
                async with asyncio.timeout(timeout):
                    await asyncio.gather(*(m.nak() for m in unacked), return_exceptions=True)
                    await nc.flush()
        await self._drop_subscriptions()  # the connection outlives this task

    @property
    def connected(self) -> bool:
        return self._link is not None and self._link.connected

    # ------------------------------------------------------------------ publishing

    def publish(
        self,
        topic: str,
        payload: bytes,
        *,
        qos: int = 1,
        retain: bool = False,
        user_properties: dict[str, str] | None = None,
    ) -> asyncio.Future[None]:
        """Data: a JetStream publish (resolved on its ack); ``retain``: the key-value entry of
        a progress report (empty payload: delete it); otherwise a plain NATS publish."""
        fut = asyncio.ensure_future(self._publish(topic, payload, retain, user_properties))
        self._pending.add(fut)
        if len(self._pending) >= self._window:
            self._window_free.clear()
        fut.add_done_callback(self._done)
        return fut

    async def _publish(
        self, topic: str, payload: bytes, retain: bool, headers: dict[str, str] | None = None
    ) -> None:
        if self._nc is None or self._js is None:
            raise NatsUnavailable("not connected")
        if retain:
            assert self._kv is not None
            key = self.names.progress_key(topic)
            if payload:
                await self._kv.put(key, payload)
            else:
                with contextlib.suppress(Exception):
                    await self._kv.delete(key)
        elif self.names.is_channel_control(topic):
            await self._nc.publish(topic, payload)
        else:
            # headers: a sampled record's trace context (MQTT 5 user properties on MQTT)
            await self._publish_data(topic, payload, headers)

    async def _publish_data(self, topic: str, payload: bytes, headers: dict[str, str] | None) -> None:
        """A record's JetStream publish, resolved once the stream has it: while NATS is away
        (restarting) it is tried again, with back-off, until it lands or the channel closes.
        Failing instead would leave the input that caused it unacknowledged on a connection
        that never drops (the input's MQTT session), and enough of those stop the task for
        good. (A publish that timed out may have landed: the consumer drops the duplicate.)"""
        backoff = Backoff(0.1, 2.0)
        while True:
            assert self._js is not None
            try:
                await self._js.publish(
                    topic, payload, stream=self.names.data_stream, headers=headers, timeout=PUBLISH_TIMEOUT
                )
                self._outage.ok()
                return
            except Exception as e:
                if self._closing or self._nc is None:
                    raise
                self._outage.failed(e)
                await asyncio.sleep(backoff.next())  # the retry's pace; closing ends it

    def _done(self, fut: asyncio.Future[None]) -> None:
        self._pending.discard(fut)
        if not fut.cancelled() and fut.exception() is not None:
            log.debug("nats publish failed: %s", fut.exception())
        if len(self._pending) < self._window:
            self._window_free.set()

    async def wait_for_window(self) -> None:
        while len(self._pending) >= self._window and self._nc is not None:
            self._window_free.clear()
            await self._window_free.wait()

    @property
    def window_full(self) -> bool:
        return len(self._pending) >= self._window

    @property
    def unacked(self) -> int:
        return len(self._pending)

    # ------------------------------------------------------------------ subscribing

    async def subscribe(
        self, topics: list[str] | str, qos: int = 1, timeout: float = 10.0, *, remember: bool = True
    ) -> None:
        if isinstance(topics, str):
            topics = [topics]
        assert self._nc is not None and self._js is not None and self._kv is not None
        if remember:
            self._topics.extend(t for t in topics if t not in self._topics)
        # all at once: each is a JetStream API round trip, and a sink has an input per producer
        await asyncio.gather(*(self._subscribe_one(t) for t in topics))

    async def _subscribe_one(self, topic: str) -> None:
        assert self._nc is not None
        if topic.endswith(".progress"):
            await self._start_watch(topic)
        elif self.names.is_channel_control(topic):
            self._subs.append(await self._nc.subscribe(topic, cb=self._core_message))
        else:
            sub = await self._pull_subscribe(topic)
            self._durables.append(self.names.consumer_for(topic))
            pull = asyncio.create_task(self._pull(topic, sub))
            self._pulls.append(pull)
            self._tasks.append(pull)

    async def _pull_subscribe(self, topic: str) -> Any:
        """The task's durable pull consumer on ``topic``, made or kept as it is by one
        create request (nats-py's ``pull_subscribe`` first asks whether it exists: a second
        round trip on every deployment's path); a create the server refuses (the consumer is
        there with settings it cannot change) falls back to binding to it as it is."""
        assert self._js is not None
        durable = self.names.consumer_for(topic)
        stream = self.names.data_stream
        config = ConsumerConfig(
            name=durable,
            durable_name=durable,
            ack_policy=AckPolicy.EXPLICIT,
            ack_wait=ACK_WAIT,
            max_ack_pending=self._max_ack_pending,
            filter_subject=topic,
        )
        try:
            await self._js.add_consumer(stream, config=config)
        except BadRequestError as e:
            try:
                await self._js.consumer_info(stream, durable)
            except NotFoundError:
                raise e from None
            log.info("nats %s: the consumer %s is kept as it is (%s)", self.client_name, durable, e)
        sub = await self._js.pull_subscribe_bind(durable=durable, stream=stream)
        self._pull_subs[topic] = sub  # unsubscribed at close: the connection outlives the task
        return sub

    async def _consumer_checked(self, topic: str, sub: Any) -> Any:
        """The watchdog of a reader: its durable consumer still there, or made again (one
        deleted behind its back, by an operator or a server that lost its state, leaves
        fetches answering nothing, forever; the work queue kept every unacknowledged
        message, which the new consumer delivers again and the task drops as seen)."""
        try:
            await sub.consumer_info()
            return sub
        except NotFoundError:
            pass
        except Exception as e:  # NATS away: the fetches say so; look again later
            log.debug("nats %s: cannot look at the consumer of %s: %s", self.client_name, topic, e)
            return sub
        new = await self._pull_subscribe(topic)
        log.warning(
            "nats %s: the consumer %s of %s was gone: made again",
            self.client_name,
            self.names.consumer_for(topic),
            topic,
        )
        with contextlib.suppress(Exception):
            await sub.unsubscribe()
        return new

    def _deliver(self, topic: str, payload: bytes, js_msg: Msg | None) -> None:
        self._next_id += 1
        if js_msg is not None:
            self._inflight[self._next_id] = js_msg
        traced = js_msg.headers.get(TRACEPARENT) if js_msg is not None and js_msg.headers else None
        msg = MqttMessage(
            topic=topic,
            payload=payload,
            qos=1 if js_msg else 0,
            mid=self._next_id,
            retain=False,
            dup=False,
            epoch=self.epoch,
            user_properties={TRACEPARENT: traced} if traced else {},
            source=self,
        )
        try:
            self._on_message(msg)
        except Exception:
            log.exception("nats %s: message handler failed on %s", self.client_name, topic)

    async def _pull(self, topic: str, sub: Any) -> None:
        loop = asyncio.get_running_loop()
        outage = Outage(f"nats {self.client_name} reading {topic}", log)
        backoff = Backoff(0.2, 5.0)
        checked = loop.time()
        while not self._closing:
            try:
                msgs = await sub.fetch(batch=FETCH_BATCH, timeout=FETCH_WAIT)
            except (TimeoutError, nats.errors.TimeoutError):
                if loop.time() - checked >= CONSUMER_CHECK_EVERY:  # idle, or deaf?
                    checked = loop.time()
                    with contextlib.suppress(Exception):
                        sub = await self._consumer_checked(topic, sub)
                continue
            except Exception as e:
                outage.failed(e)
                await asyncio.sleep(backoff.next())
                with contextlib.suppress(Exception):
                    sub = await self._consumer_checked(topic, sub)
                checked = loop.time()
                continue
            outage.ok()
            backoff.reset()
            checked = loop.time()
            for m in msgs:
                self._deliver(topic, m.data, m)

    async def _start_watch(self, topic: str) -> None:
        assert self._kv is not None
        watcher = await self._kv.watch(self.names.progress_key(topic))
        task = asyncio.create_task(self._watch(topic, watcher))
        self._watchers[topic] = (watcher, task)
        self._tasks.append(task)

    async def reconnected(self) -> None:
        """NATS is back: watch every progress key again (the latest value comes first)."""
        if self._closing or not self._watchers:
            return
        log.info("nats %s reconnected: renewing %d progress watch(es)", self.client_name, len(self._watchers))
        for topic, (old, task) in list(self._watchers.items()):
            task.cancel()
            with contextlib.suppress(Exception):
                await old.stop()
            for attempt in range(50):
                if self._closing:
                    break
                try:
                    await self._start_watch(topic)
                    break
                except Exception as e:  # JetStream may need a moment after the restart
                    if attempt == 49:
                        log.warning("nats %s: cannot watch %s again: %s", self.client_name, topic, e)
                    await asyncio.sleep(0.2)
        if self._closing:  # closed meanwhile: a watch just made is nobody's
            await self._drop_subscriptions()

    async def _watch(self, topic: str, watcher: Any) -> None:
        async for entry in watcher:
            if entry is None or entry.value is None:
                continue
            self._deliver(topic, entry.value, None)

    async def _core_message(self, m: Msg) -> None:
        self._deliver(m.subject, m.data, None)

    def ack(self, msg: MqttMessage) -> None:
        js_msg = self._inflight.pop(msg.mid, None)
        if js_msg is not None and self._nc is not None and js_msg.reply:
            # over the current connection: the message may have come on one closed since
            t = asyncio.ensure_future(self._nc.publish(js_msg.reply, b"+ACK"))
            t.add_done_callback(lambda f: f.cancelled() or f.exception())


__all__ = ["NatsChannels", "NatsUnavailable", "NotFoundError"]
