"""What ECHO's MQTT adapter (``mqtt``) decides without paho: the life of its connection.

``MqttConnection`` is the base class of ``mqtt.MqttClient``: the adapter supplies the wire
(``_dial``, ``_drop_socket``, ``_send_subscribe``, ``close``) and its paho callbacks feed the
state kept here, which needs no paho:

- ``start()`` dials until its deadline and waits for the CONNACK (``MqttUnavailable`` on
  failure), or with ``offline_ok`` goes on dialling in the background;
- automatic reconnect with capped exponential back-off;
- subscriptions remembered for every reconnect, and asked for again when their SUBACK was
  lost with a dropped connection;
- ``taken_over`` when another process holds the same client id: either the broker says so
  (MQTT 5 reason 0x8E) or, since some brokers (Mosquitto 2.0) just close the socket, the
  connection is dropped right after each of ``TAKEOVER_DROPS`` consecutive connects. The
  client then stops reconnecting instead of fighting the other holder for the session
  (agents and their tasks), or, with ``yield_session=False`` (services, which must never go
  deaf), keeps reconnecting every ``reconnect_max_delay`` seconds, logging it once;
- the bounded window of unacknowledged publishes (``await wait_for_window()``) that makes
  producers feel back-pressure.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from abc import ABC, abstractmethod
from collections.abc import Awaitable, Sequence
from typing import Any, Protocol

from .mqtt_types import MqttRefused, MqttUnavailable, parse_url

# the adapter's logger: these records keep the name they had before the module was split
log = logging.getLogger("echo_shared.mqtt")

SESSION_TAKEN_OVER = 142  # MQTT 5 reason code 0x8E
TAKEOVER_DROPS = 3  # consecutive drops within QUICK_DROP seconds of connecting
QUICK_DROP = 3.0


class Reason(Protocol):
    """An MQTT 5 reason code as paho hands it (``paho.mqtt.reasoncodes.ReasonCode``)."""

    @property
    def is_failure(self) -> bool: ...


class MqttConnection(ABC):
    """Connection state and policies of an MQTT client, whatever drives the wire."""

    def __init__(
        self,
        url: str,
        client_id: str,
        *,
        persistent: bool,
        publish_window: int,
        reconnect_max_delay: float,
        yield_session: bool,
    ) -> None:
        self.url = url
        # False (services): a contested session is never given up, only retried slowly
        self._yield_session = yield_session
        self.client_id = client_id
        self._host, self._port, self._tls = parse_url(url)
        self._persistent = persistent
        self._reconnect_max_delay = reconnect_max_delay
        self._publish_window = publish_window
        self._window_free = asyncio.Event()

        self._loop: asyncio.AbstractEventLoop | None = None
        self._sock: Any = None
        self._subs: dict[str, int] = {}
        self._pending_pub: dict[int, asyncio.Future[None]] = {}
        self._connected = asyncio.Event()
        self._first_connect: asyncio.Future[bool] | None = None
        self._reconnect_task: asyncio.Task[None] | None = None
        self._closing = False
        self.epoch = 0
        self.session_present = False
        self.taken_over = asyncio.Event()
        self.disconnects = 0
        self._connected_at = 0.0
        self._quick_drops = 0
        self._socket_closed = asyncio.Event()
        self.refused = asyncio.Event()  # the broker refuses our login (set until a connect succeeds)
        self._refusal_logged = False

    # ------------------------------------------------------------------ the wire (the adapter's)

    @abstractmethod
    async def _dial(self) -> None:
        """Open a connection and send CONNECT (``OSError`` when it cannot)."""

    @abstractmethod
    def _drop_socket(self) -> None:
        """Stop watching the current socket."""

    @abstractmethod
    def _send_subscribe(self, subs: list[tuple[str, int]]) -> Awaitable[Sequence[Reason]] | None:
        """Send SUBSCRIBE; awaiting the result gives the SUBACK's codes (None: not connected)."""

    @abstractmethod
    async def close(self, *, discard_session: bool = False, timeout: float = 2.0) -> None:
        """Disconnect (idempotent)."""

    # ------------------------------------------------------------------ connecting

    async def _first_connection(self, timeout: float, offline_ok: bool) -> None:
        """``start()`` once the client is set up: dial until ``timeout``, wait for the CONNACK."""
        assert self._loop is not None
        self._first_connect = self._loop.create_future()
        deadline = self._loop.time() + timeout
        delay = 0.05
        while True:  # the broker may start after us: dial until the deadline
            try:
                await self._dial()
                break
            except OSError as e:
                if self._loop.time() + delay > deadline:
                    if offline_ok:
                        self._go_offline(e)
                        return
                    await self.close()
                    raise MqttUnavailable(f"MQTT broker {self._host}:{self._port} unreachable: {e}") from e
                await asyncio.sleep(delay)
                delay = min(delay * 2, 1.0)
        try:
            await asyncio.wait_for(
                asyncio.shield(self._first_connect), max(deadline - self._loop.time(), 1.0)
            )
        except MqttRefused as e:
            await self.close()
            raise MqttRefused(f"MQTT broker {self._host}:{self._port} refused {self.client_id}: {e}") from e
        except (TimeoutError, MqttUnavailable) as e:
            if offline_ok:
                self._go_offline(e)
                return
            await self.close()
            raise MqttUnavailable(f"MQTT broker {self._host}:{self._port} did not accept us: {e}") from e

    def _go_offline(self, why: BaseException) -> None:
        log.warning(
            "mqtt %s: broker %s:%s out of reach (%s); working offline, dialling in the background",
            self.client_id,
            self._host,
            self._port,
            why,
        )
        assert self._loop is not None
        if self._first_connect is not None and not self._first_connect.done():
            self._first_connect.cancel()
        if self._reconnect_task is None or self._reconnect_task.done():
            self._reconnect_task = self._loop.create_task(self._reconnect_loop())

    async def _wait_socket_closed(self) -> None:
        if self._sock is not None:
            self._socket_closed.clear()
            await self._socket_closed.wait()

    @property
    def connected(self) -> bool:
        return self._connected.is_set()

    async def wait_connected(self, timeout: float | None = None) -> None:
        await asyncio.wait_for(self._connected.wait(), timeout)

    # ------------------------------------------------------------------ subscriptions

    async def subscribe(self, topics: list[str] | str, qos: int = 1, timeout: float = 10.0) -> None:
        """Subscribe (and remember, so every reconnect re-subscribes). Waits for the SUBACK."""
        if isinstance(topics, str):
            topics = [topics]
        for t in topics:
            self._subs[t] = qos
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            fut = self._send_subscribe([(t, qos) for t in topics])
            if fut is None:
                return  # not connected: the reconnect subscribes to everything remembered
            # a SUBACK lost with a dropped connection never comes: ask again on the new one
            attempt = min(max(deadline - loop.time(), 0.0), max(timeout / 4, 1.0))
            try:
                codes = await asyncio.wait_for(fut, attempt)
                break
            except TimeoutError:
                if loop.time() >= deadline:
                    raise
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._connected.wait(), max(deadline - loop.time(), 0.0))
        bad = [str(rc) for rc in codes if rc.is_failure]
        if bad:
            raise MqttUnavailable(f"subscription to {topics} refused: {bad}")

    # ------------------------------------------------------------------ publish window

    async def wait_for_window(self) -> None:
        """Block while the number of unacknowledged publishes is at the window size."""
        while len(self._pending_pub) >= self._publish_window and not self._closing:
            self._window_free.clear()
            await self._window_free.wait()

    def _published(self, mid: int, rc: Reason | None) -> None:
        """The broker has publish ``mid`` (``rc``: its PUBACK's reason code); frees its window slot."""
        fut = self._pending_pub.pop(mid, None)
        if len(self._pending_pub) < self._publish_window:
            self._window_free.set()
        if fut is None or fut.done():
            return
        if rc is not None and rc.is_failure:
            fut.set_exception(MqttUnavailable(f"publish refused: {rc}"))
        else:
            fut.set_result(None)

    @property
    def unacked(self) -> int:
        return len(self._pending_pub)

    @property
    def window_full(self) -> bool:
        return len(self._pending_pub) >= self._publish_window

    # ------------------------------------------------------------------ reconnecting

    def _disconnected(self, reason: int, rc: object) -> None:
        """The connection is gone (``reason``: the broker's MQTT 5 reason code, ``rc`` as paho
        has it): reconnect, slowly if the session is contested, or give the session up."""
        self._connected.clear()
        self.disconnects += 1
        self.epoch += 1
        if self._closing:
            return
        if self.refused.is_set():  # refused logins are not a contested session; retry (backoff)
            if self._loop is not None and (self._reconnect_task is None or self._reconnect_task.done()):
                self._reconnect_task = self._loop.create_task(self._reconnect_loop())
            return
        lived = time.monotonic() - self._connected_at
        self._quick_drops = self._quick_drops + 1 if lived < QUICK_DROP else 0
        if self._quick_drops == 0 and not self._yield_session and self.taken_over.is_set():
            log.warning("mqtt %s: the session is ours again", self.client_id)
            self.taken_over.clear()
        if reason == SESSION_TAKEN_OVER or (self._persistent and self._quick_drops >= TAKEOVER_DROPS):
            if self._yield_session:
                log.warning("mqtt %s: another client holds this session; giving it up", self.client_id)
                self.taken_over.set()
                return
            if not self.taken_over.is_set():  # once per streak; reconnecting never stops
                log.warning(
                    "mqtt %s: the session is contested (another client with this id?); reconnecting "
                    "every %.0f s",
                    self.client_id,
                    self._reconnect_max_delay,
                )
                self.taken_over.set()
            if self._loop is not None and (self._reconnect_task is None or self._reconnect_task.done()):
                self._reconnect_task = self._loop.create_task(self._reconnect_loop(self._reconnect_max_delay))
            return
        log.info("mqtt %s disconnected (%s); reconnecting", self.client_id, rc)
        if self._loop is not None and (self._reconnect_task is None or self._reconnect_task.done()):
            self._reconnect_task = self._loop.create_task(self._reconnect_loop())

    async def _reconnect_loop(self, first_delay: float = 0.0) -> None:
        delay = 0.05
        if first_delay:
            await asyncio.sleep(first_delay)
        while not self._closing and not self.connected:
            if self._yield_session and self.taken_over.is_set():
                return  # given up: dialling again would kick the session's holder once more
            self._drop_socket()
            try:
                await self._dial()
                for _ in range(200):  # wait for the CONNACK before dialling again
                    if self.connected or self._sock is None or self._closing:
                        break
                    await asyncio.sleep(0.025)
                if self.connected:
                    return
            except OSError as e:
                log.debug("mqtt %s: reconnect failed: %s", self.client_id, e)
            await asyncio.sleep(delay)
            delay = min(delay * 2, self._reconnect_max_delay)
