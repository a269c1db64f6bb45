"""One MQTT connection for all of an agent's tasks: the agent's data session.

Every task used to open an MQTT session of its own; a device running 50 tasks held 51
connections to the broker that faces the internet, and deploying a task cost a TLS
handshake and a login. Now the agent opens one data session (client id
``{ns}-data-{device}``, persistent) beside its control session, and each task talks to it
through a ``TaskChannels`` view with the interface the data plane already uses (publish,
subscribe, ack, a publish window):

- **Routing**: a message goes to every view subscribed to its topic (channel topics are
  exact names, no wildcards). One that no view holds (a subscription left from an earlier
  life of the session, a message still in flight for a task that stopped) is acknowledged
  and its topic unsubscribed: the producer keeps every record until its consumer's
  progress report covers it, and sends again what a consumer lacks.
- **Acknowledgements**: a delivery is acknowledged to the broker once every view it went
  to acknowledged it (a view that closes counts as having acknowledged what it held), so
  one task's outputs being safe never acknowledges another task's input.
- **Windows**: each view has its own publish window (unacknowledged publishes), so a task
  blocked on a slow broker path blocks only itself; the connection's own in-flight limit
  is the broker's receive maximum.
- **Durable positions per task**: a task's position in each input channel is its own
  (the consumer's high-water mark per producer, in its checkpoints and its retained
  progress reports), not the broker session's: a copy of the task started anywhere says
  where it stands, and its producers send it what comes after.
- Subscribing always sends SUBSCRIBE, even for a topic another view holds, so the
  retained progress report on it reaches the view that asked.

Control (commands, heartbeats, the will) stays on the control session: data never queues
in front of a heartbeat, and the connection whose loss declares the device gone is not
the one carrying megabytes of data.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
from collections.abc import Callable

from echo_shared.credentials import Login
from echo_shared.mqtt import MqttClient, MqttMessage, MqttUnavailable

log = logging.getLogger(__name__)

TASK_WINDOW = 100  # unacknowledged publishes per task (what a task's own session allowed)
SESSION_WINDOW = 65000  # futures the connection tracks; in flight: the broker's receive maximum
RECEIVE_MAXIMUM = 65535  # deliveries the broker may send unacknowledged, over all tasks

Handler = Callable[[MqttMessage], None]


class DataSession:
    """The agent's one MQTT data connection, shared by its tasks' ``TaskChannels``."""

    def __init__(
        self,
        url: str,
        client_id: str,
        *,
        session_expiry: int,
        login: Login | None = None,
        tls: ssl.SSLContext | None = None,
        keepalive: int = 10,
    ) -> None:
        self.client = MqttClient(
            url,
            client_id,
            keepalive=keepalive,
            on_message=self._dispatch,
            persistent=True,
            session_expiry=session_expiry,
            receive_maximum=RECEIVE_MAXIMUM,
            manual_ack=True,
            publish_window=SESSION_WINDOW,
            login=login,
            tls=tls,
        )
        self._routes: dict[str, list[TaskChannels]] = {}
        self._pending: dict[tuple[int, int], int] = {}  # (epoch, mid) -> views yet to ack
        self._started: asyncio.Task[None] | None = None
        self._dropping: dict[str, asyncio.Future[None]] = {}  # topics being unsubscribed
        self.unrouted = 0
        # a broker out of reach is no error: tasks work offline (their outputs spool) while
        # the session dials in the background; ``connect_timeout`` is how long a start tries
        # first (short when the agent already knows it is cut off)
        self.connect_timeout = 30.0

    async def start(self) -> None:
        """Connect once (views wait for the same attempt); a failed attempt is retried by the next."""
        if self._started is None or (self._started.done() and self._started.exception() is not None):
            self._started = asyncio.ensure_future(
                self.client.start(timeout=self.connect_timeout, offline_ok=True)
            )
        await asyncio.shield(self._started)

    def channels(self, task: str, on_message: Handler) -> TaskChannels:
        return TaskChannels(self, task, on_message)

    def relogin(self, login: Login) -> None:
        self.client.relogin(login)

    async def close(self) -> None:
        await self.client.close()

    @property
    def views(self) -> int:
        return len({id(v) for vs in self._routes.values() for v in vs})

    # ---------------------------------------------------------------- routing

    def _dispatch(self, msg: MqttMessage) -> None:
        views = self._routes.get(msg.topic)
        if not views:
            self.unrouted += 1
            self.client.ack(msg)
            if msg.topic not in self._dropping:
                self._dropping[msg.topic] = asyncio.ensure_future(self._drop(msg.topic))
            return
        if msg.qos:
            self._pending[(msg.epoch, msg.mid)] = len(views)
        for v in list(views):
            v._deliver(msg)

    async def _drop(self, topic: str) -> None:
        try:
            if topic not in self._routes:
                await self.client.unsubscribe([topic])
        finally:
            self._dropping.pop(topic, None)

    def _ack(self, msg: MqttMessage) -> None:
        key = (msg.epoch, msg.mid)
        left = self._pending.get(key)
        if left is None:
            return
        if left > 1:
            self._pending[key] = left - 1
            return
        del self._pending[key]
        self.client.ack(msg)

    def _hold(self, view: TaskChannels, topics: list[str]) -> None:
        for t in topics:
            views = self._routes.setdefault(t, [])
            if view not in views:
                views.append(view)

    def _release(self, view: TaskChannels, topics: list[str]) -> list[str]:
        """Forget ``view`` on ``topics``; the topics no view holds any more."""
        free = []
        for t in topics:
            views = self._routes.get(t)
            if views is None:
                continue
            with contextlib.suppress(ValueError):
                views.remove(view)
            if not views:
                del self._routes[t]
                free.append(t)
        return free


class TaskChannels:
    """One task's view of the agent's data session (the ``Transport`` a task's MQTT channels use)."""

    def __init__(
        self, session: DataSession, task: str, on_message: Handler, window: int = TASK_WINDOW
    ) -> None:
        self.session = session
        self.task = task
        self._on_message = on_message
        self._window = window
        self._topics: set[str] = set()
        self._held: dict[tuple[int, int], MqttMessage] = {}  # delivered, not yet acked
        self._pending = 0
        self._window_free = asyncio.Event()
        self._window_free.set()
        self._closed = False
        self.taken_over = asyncio.Event()  # never set: the session is the agent's, not the task's

    @property
    def connected(self) -> bool:
        return self.session.client.connected and not self._closed

    @property
    def client_id(self) -> str:
        return self.session.client.client_id

    async def wait_connected(self, timeout: float | None = None) -> None:
        await self.session.client.wait_connected(timeout)

    async def start(self, timeout: float = 30.0) -> None:
        await asyncio.wait_for(self.session.start(), timeout)

    def relogin(self, login: Login) -> None:
        self.session.relogin(login)

    async def subscribe(self, topics: list[str] | str, qos: int = 1, timeout: float = 10.0) -> None:
        if isinstance(topics, str):
            topics = [topics]
        if self._closed:
            raise MqttUnavailable("task channels closed")
        self._topics.update(topics)
        self.session._hold(self, topics)
        await self.session.client.subscribe(topics, qos=qos, timeout=timeout)

    async def unsubscribe(self, topics: list[str]) -> None:
        self._topics.difference_update(topics)
        free = self.session._release(self, topics)
        if free:
            await self.session.client.unsubscribe(free)

    def publish(
        self,
        topic: str,
        payload: bytes,
        *,
        qos: int = 1,
        retain: bool = False,
        user_properties: dict[str, str] | None = None,
    ) -> asyncio.Future[None]:
        if self._closed:
            fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            fut.set_exception(MqttUnavailable("task channels closed"))
            return fut
        fut = self.session.client.publish(
            topic, payload, qos=qos, retain=retain, user_properties=user_properties
        )
        if qos and not fut.done():
            self._pending += 1
            if self._pending >= self._window:
                self._window_free.clear()
            fut.add_done_callback(self._published)
        return fut

    def _published(self, _fut: asyncio.Future[None]) -> None:
        self._pending -= 1
        if self._pending < self._window:
            self._window_free.set()

    async def wait_for_window(self) -> None:
        while self._pending >= self._window and not self._closed:
            await self._window_free.wait()

    @property
    def unacked(self) -> int:
        return self._pending

    @property
    def window_full(self) -> bool:
        return self._pending >= self._window

    def _deliver(self, msg: MqttMessage) -> None:
        if msg.qos:
            self._held[(msg.epoch, msg.mid)] = msg
        try:
            self._on_message(msg)
        except Exception:
            log.exception("task %s: message handler failed on %s", self.task, msg.topic)

    def ack(self, msg: MqttMessage) -> None:
        if self._held.pop((msg.epoch, msg.mid), None) is not None:
            self.session._ack(msg)

    async def close(self, *, discard_session: bool = False, timeout: float = 2.0) -> None:
        """Leave the task's channels (idempotent). What it held unacknowledged is released:
        its producers keep every record until a copy of the task reports it."""
        if self._closed:
            return
        self._closed = True
        self._window_free.set()
        for msg in list(self._held.values()):
            self.session._ack(msg)
        self._held.clear()
        free = self.session._release(self, list(self._topics))
        self._topics.clear()
        if free:
            await self.session.client.unsubscribe(free)
