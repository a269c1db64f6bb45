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
- a connection the server closes for good (nats-py gives up after an ``Authorization
  Violation``, which a device's login through the auth callout can meet while everything
  reconnects at once after a restart) is opened again, and every subscription with it;
  acknowledgements go over whichever connection is current (an ack is a plain publish to
  the message's reply subject), so nothing fetched before is left pending.

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
from nats.js.errors import BucketNotFoundError, NotFoundError
from nats.js.kv import KeyValue

from echo_shared.mqtt import MqttMessage
from echo_shared.names import Names
from echo_shared.nats_bus import connection_callbacks, ensure_data_plane, nats_servers
from echo_shared.outage import Backoff, Outage

from .recordtrace import TRACEPARENT

log = logging.getLogger(__name__)

FETCH_BATCH = 64
FETCH_WAIT = 0.5  # seconds a pull waits for messages when there are none (also: close's wait)
CONSUMER_CHECK_EVERY = 5.0  # seconds of empty fetches before a reader checks its consumer is there
ACK_WAIT = 60.0  # seconds JetStream waits for an ack before redelivering (acks wait for outputs)
PUBLISH_TIMEOUT = 2.0  # seconds a JetStream publish waits for the stream's ack before trying again


class NatsUnavailable(OSError):
    pass


class NatsChannels:
    def __init__(
        self,
        url: str,
        names: Names,
        client_name: str,
        on_message: Callable[[MqttMessage], None],
        *,
        window: int = 100,
        max_ack_pending: int = 1000,
        options: dict[str, Any] | None = None,
    ) -> None:
        self.url = url
        self._options = options or {}  # login and TLS (``Access.nats_options``)
        self.names = names
        self.client_name = client_name
        self._on_message = on_message
        self._window = window
        self._max_ack_pending = max_ack_pending
        self._nc: NatsClient | None = None
        self._js: JetStreamContext | None = None
        self._kv: KeyValue | None = None
        self._pending: set[asyncio.Future[None]] = set()
        self._window_free = asyncio.Event()
        self._window_free.set()
        self._tasks: list[asyncio.Task[None]] = []
        self._inflight: dict[int, Msg] = {}
        self._next_id = 0
        self._durables: list[str] = []
        self._subs: list[Any] = []
        self._watchers: dict[str, tuple[Any, asyncio.Task[None]]] = {}  # progress topic -> watch
        self._pulls: list[asyncio.Task[None]] = []
        self.taken_over = asyncio.Event()  # never set: JetStream has no session takeover
        self._closing = False
        self._reopening: asyncio.Task[None] | None = None
        self._topics: list[str] = []  # everything subscribed (a new connection subscribes again)
        self._outage = Outage(f"nats data publishes of {client_name}", log)
        self.epoch = 1

    # ------------------------------------------------------------------ lifecycle

    async def start(self, timeout: float = 10.0) -> None:
        try:
            self._nc = await nats.connect(
                nats_servers(self.url),
                name=self.client_name,
                connect_timeout=timeout,
                max_reconnect_attempts=-1,
                reconnect_time_wait=0.5,
                closed_cb=self._closed,
                **connection_callbacks(
                    self.client_name, on_reconnect=self._reconnected, closing=lambda: self._closing
                ),
                **self._options,
            )
        except Exception as e:
            raise NatsUnavailable(f"NATS at {self.url} unreachable: {e}") from e
        self._js = self._nc.jetstream()
        self._kv = await self._lookup()

    async def _closed(self) -> None:
        """The connection ended for good: unless we close, open a new one."""
        if self._closing or (self._reopening is not None and not self._reopening.done()):
            return
        log.warning(
            "nats %s: the connection was closed (%s); opening a new one", self.client_name, self._last_err()
        )
        self._reopening = asyncio.create_task(self._reopen(), name=f"reopen-{self.client_name}")

    def _last_err(self) -> str:
        err = getattr(self._nc, "last_error", None) if self._nc is not None else None
        return f"{type(err).__name__}: {err}" if err is not None else "no error given"

    async def _reopen(self) -> None:
        backoff = Backoff(0.2, 5.0)
        while not self._closing:
            try:
                await self.start(timeout=5.0)
                for t in self._tasks:  # the old connection's pulls and watches
                    t.cancel()
                self._tasks, self._pulls, self._subs, self._watchers = [], [], [], {}
                self._durables = []
                await self.subscribe(list(self._topics), remember=False)
                log.warning("nats %s: a new connection took over every subscription", self.client_name)
                return
            except Exception as e:
                log.debug("nats %s: cannot open a new connection: %s", self.client_name, e)
                await asyncio.sleep(backoff.next())  # the retry's pace; closing ends it

    async def _lookup(self) -> KeyValue:
        """The data stream and progress bucket, which the master prepares: a device may only
        look them up. (A privileged client without a master, e.g. a test, creates them.)"""
        assert self._js is not None
        try:
            await self._js.stream_info(self.names.data_stream)
            return await self._js.key_value(self.names.progress_bucket)
        except (NotFoundError, BucketNotFoundError):
            try:
                await ensure_data_plane(self._js, self.names)
                return await self._js.key_value(self.names.progress_bucket)
            except Exception as e:
                raise NatsUnavailable(
                    f"the NATS data stream {self.names.data_stream} is missing (the master creates it): {e}"
                ) from e

    async def close(self, *, discard_session: bool = False, timeout: float = 2.0) -> None:
        self._closing = True
        if self._reopening is not None and not self._reopening.done():
            self._reopening.cancel()
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
        nc, self._nc = self._nc, None
        if nc is None:
            return
        if discard_session and self._js is not None:
            for durable in self._durables:  # the task is gone for good: so is its position
                with contextlib.suppress(Exception):
                    await self._js.delete_consumer(self.names.data_stream, durable)
        elif self._inflight:
            # fetched but not acknowledged (not processed, or outputs not yet safe): give them
            # back at once, for the next copy; left alone they would block the durable for
            # ACK_WAIT once max_ack_pending of them piled up over a few moves
            unacked, self._inflight = list(self._inflight.values()), {}
            with contextlib.suppress(Exception):
                async with asyncio.timeout(timeout):
                    await asyncio.gather(*(m.nak() for m in unacked), return_exceptions=True)
                    await nc.flush()
        for w, _ in self._watchers.values():
            with contextlib.suppress(Exception):
                await w.stop()
        for sub in self._subs:
            with contextlib.suppress(Exception):
                await sub.unsubscribe()
        with contextlib.suppress(Exception):  # publishes were awaited and acks sent: no drain
            async with asyncio.timeout(timeout):
                await nc.close()

    @property
    def connected(self) -> bool:
        return self._nc is not None and self._nc.is_connected

    def relogin(self, user: str, password: str) -> None:
        """Use a new login from the next reconnect on (credential rotation). nats-py keeps the
        login it sends at each (re)connect in ``options``."""
        self._options.update(user=user, password=password)
        if self._nc is not None:
            self._nc.options["user"] = user
            self._nc.options["password"] = password

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
        """The task's durable pull consumer on ``topic`` (made if it is not there)."""
        assert self._js is not None
        return await self._js.pull_subscribe(
            topic,
            durable=self.names.consumer_for(topic),
            stream=self.names.data_stream,
            config=ConsumerConfig(
                ack_policy=AckPolicy.EXPLICIT,
                ack_wait=ACK_WAIT,
                max_ack_pending=self._max_ack_pending,
                filter_subject=topic,
            ),
        )

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

    async def _reconnected(self) -> None:
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
                    return
                try:
                    await self._start_watch(topic)
                    break
                except Exception as e:  # JetStream may need a moment after the restart
                    if attempt == 49:
                        log.warning("nats %s: cannot watch %s again: %s", self.client_name, topic, e)
                    await asyncio.sleep(0.2)

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
