"""The one MQTT adapter: paho-mqtt 2 (MQTT 5) driven by the asyncio event loop.

Nothing else in ECHO imports paho. The paho client runs without a thread of its own:
its socket is registered with the event loop (``add_reader``/``add_writer``), so every
paho callback runs on the loop thread and may touch asyncio objects. Only the blocking
TCP connect runs in an executor; the socket callbacks it triggers are handed back to
the loop with ``call_soon_threadsafe``.

What the adapter adds to paho:

- ``await client.start()`` waits for the CONNACK (``MqttUnavailable`` on failure);
- ``publish()`` returns a future resolved on PUBACK (QoS 1), with a bounded window of
  unacknowledged publishes (``await wait_for_window()``) so producers feel back-pressure;
- automatic reconnect with capped exponential back-off, re-subscribing every time;
- manual acknowledgement of QoS 1 deliveries (``ack(msg)``), ignored for deliveries of an
  earlier connection (their packet ids are meaningless on the new one: the broker
  redelivers them instead);
- persistent sessions (``clean_start=False`` plus a session expiry) named by client id,
  and ``taken_over`` when another process holds the same id: either the broker says so
  (MQTT 5 reason 0x8E) or, since some brokers (Mosquitto 2.0) just close the socket, the
  connection is dropped right after each of ``TAKEOVER_DROPS`` consecutive connects. The
  client then stops reconnecting instead of fighting the other holder for the session
  (agents and their tasks), or, with ``yield_session=False`` (services, which must never go
  deaf), keeps reconnecting every ``reconnect_max_delay`` seconds, logging it once;
- an idempotent, time-limited ``close()``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import ssl
import threading
import time
from collections.abc import Callable
from typing import Any

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode, MQTTProtocolVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from .credentials import Login, client_tls
from .mqtt_types import (
    REFUSED_LOGIN,
    MessageHandler,
    MqttMessage,
    MqttRefused,
    MqttUnavailable,
    SessionTakenOver,
    Will,
    parse_url,
)

log = logging.getLogger(__name__)

SESSION_TAKEN_OVER = 142  # MQTT 5 reason code 0x8E
TAKEOVER_DROPS = 3  # consecutive drops within QUICK_DROP seconds of connecting
QUICK_DROP = 3.0


class _Client(paho.Client):
    """paho's client, taking a socket the event loop connected (no thread for the connect)."""

    preconnected: socket.socket | None = None

    def _create_socket_connection(self) -> socket.socket:
        sock, self.preconnected = self.preconnected, None
        if sock is not None:
            return sock
        return super()._create_socket_connection()


def _properties(packet_type: int) -> Properties:
    return Properties(packet_type)  # type: ignore[no-untyped-call]


class MqttClient:
    """An asyncio MQTT 5 client. Use as ``async with MqttClient(...) as c`` or start/close."""

    def __init__(
        self,
        url: str,
        client_id: str,
        *,
        on_message: MessageHandler | None = None,
        persistent: bool = False,
        session_expiry: int = 3600,
        receive_maximum: int = 1000,
        manual_ack: bool = False,
        keepalive: int = 10,
        publish_window: int = 100,
        will: Will | None = None,
        reconnect_max_delay: float = 5.0,
        login: Login | None = None,
        tls: ssl.SSLContext | None = None,
        yield_session: bool = True,
    ) -> None:
        self.url = url
        # False (services): a contested session is never given up, only retried slowly
        self._yield_session = yield_session
        self.client_id = client_id
        self._host, self._port, self._tls = parse_url(url)
        self._login = login
        self._tls_context = tls
        self._on_message = on_message
        self._persistent = persistent
        self._session_expiry = session_expiry if persistent else 0
        self._receive_maximum = receive_maximum
        self._manual_ack = manual_ack
        self._keepalive = keepalive
        self._will = will
        self._reconnect_max_delay = reconnect_max_delay
        self._publish_window = publish_window
        self._window_free = asyncio.Event()

        self._loop: asyncio.AbstractEventLoop | None = None
        self._loop_thread: int | None = None
        self._client: paho.Client | None = None
        self._sock: Any = None
        self._subs: dict[str, int] = {}
        self._pending_pub: dict[int, asyncio.Future[None]] = {}
        self._pending_sub: dict[int, asyncio.Future[list[ReasonCode]]] = {}
        self._connected = asyncio.Event()
        self._first_connect: asyncio.Future[bool] | None = None
        self._misc_task: asyncio.Task[None] | None = None
        self._reconnect_task: asyncio.Task[None] | None = None
        self._closing = False
        self._closed = asyncio.Event()
        self.epoch = 0
        self.session_present = False
        self.taken_over = asyncio.Event()
        self.disconnects = 0
        self._connected_at = 0.0
        self._quick_drops = 0
        self._socket_closed = asyncio.Event()
        self.refused = asyncio.Event()  # the broker refuses our login (set until a connect succeeds)
        self._refusal_logged = False

    # ------------------------------------------------------------------ lifecycle

    async def __aenter__(self) -> MqttClient:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def start(self, timeout: float = 10.0, *, offline_ok: bool = False) -> None:
        """Connect (dialling until ``timeout``). ``offline_ok``: a broker out of reach is not an
        error: the client returns and keeps dialling in the background (a refused login
        still is); what it publishes meanwhile is kept and subscriptions are made on connect."""
        self._loop = asyncio.get_running_loop()
        self._loop_thread = threading.get_ident()
        c = _Client(
            callback_api_version=CallbackAPIVersion.VERSION2,
            client_id=self.client_id,
            protocol=MQTTProtocolVersion.MQTTv5,
            manual_ack=self._manual_ack,
        )
        c.max_inflight_messages_set(min(self._publish_window, 65000))
        c.max_queued_messages_set(0)
        if self._tls:
            c.tls_set_context(self._tls_context or client_tls(None))
        if self._login is not None:
            c.username_pw_set(self._login.username, self._login.password)
        if self._will is not None:
            c.will_set(self._will.topic, self._will.payload, self._will.qos, self._will.retain)
        c.on_connect = self._on_connect
        c.on_disconnect = self._on_disconnect
        c.on_message = self._on_paho_message
        c.on_publish = self._on_publish
        c.on_subscribe = self._on_subscribe
        c.on_socket_open = self._threadsafe(self._on_socket_open)
        c.on_socket_close = self._threadsafe(self._on_socket_close)
        c.on_socket_register_write = self._threadsafe(self._on_socket_register_write)
        c.on_socket_unregister_write = self._threadsafe(self._on_socket_unregister_write)
        props = _properties(PacketTypes.CONNECT)
        props.ReceiveMaximum = self._receive_maximum
        if self._session_expiry:
            props.SessionExpiryInterval = self._session_expiry
        c.connect_async(
            self._host,
            self._port,
            keepalive=self._keepalive,
            clean_start=not self._persistent,
            properties=props,
        )
        self._client = c
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

    async def _dial(self) -> None:
        assert self._client is not None and self._loop is not None
        if self._tls:  # paho's TLS handshake blocks: keep it off the loop
            rc = await self._loop.run_in_executor(None, self._client.reconnect)
        else:
            # connect the TCP socket on the loop, then let paho send CONNECT on it
            sock = socket.socket(socket.AF_INET6 if ":" in self._host else socket.AF_INET, socket.SOCK_STREAM)
            sock.setblocking(False)
            try:
                async with asyncio.timeout(5.0):
                    await self._loop.sock_connect(sock, (self._host, self._port))
            except BaseException:
                sock.close()
                raise
            assert isinstance(self._client, _Client)
            self._client.preconnected = sock
            rc = self._client.reconnect()
        if rc != MQTTErrorCode.MQTT_ERR_SUCCESS:
            raise OSError(f"connect failed: {paho.error_string(rc)}")

    async def close(self, *, discard_session: bool = False, timeout: float = 2.0) -> None:
        """Disconnect (idempotent). ``discard_session`` ends a persistent session for good."""
        if self._closing:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._closed.wait(), timeout)
            return
        self._closing = True
        for t in (self._reconnect_task, self._misc_task):
            if t is not None:
                t.cancel()
        c = self._client
        if discard_session and self._persistent and (c is None or not c.is_connected()):
            log.warning("mqtt %s: not connected; its session is left to expire", self.client_id)
        try:
            if c is not None and c.is_connected():
                props = None
                if discard_session and self._persistent:
                    props = _properties(PacketTypes.DISCONNECT)
                    props.SessionExpiryInterval = 0
                c.disconnect(properties=props)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wait_socket_closed(), timeout)
        finally:
            self._drop_socket()
            err = MqttUnavailable("client closed")
            pending: list[asyncio.Future[Any]] = [*self._pending_pub.values(), *self._pending_sub.values()]
            for fut in pending:
                if not fut.done():
                    fut.set_exception(err)
                    fut.exception()  # mark retrieved
            self._pending_pub.clear()
            self._pending_sub.clear()
            self._window_free.set()
            if self._first_connect is not None and not self._first_connect.done():
                self._first_connect.set_exception(err)
                self._first_connect.exception()
            self._closed.set()

    async def _wait_socket_closed(self) -> None:
        if self._sock is not None:
            self._socket_closed.clear()
            await self._socket_closed.wait()

    @property
    def connected(self) -> bool:
        return self._connected.is_set()

    def relogin(self, login: Login) -> None:
        """Use ``login`` from the next (re)connect on (credential rotation)."""
        self._login = login
        if self._client is not None:
            self._client.username_pw_set(login.username, login.password)

    async def wait_connected(self, timeout: float | None = None) -> None:
        await asyncio.wait_for(self._connected.wait(), timeout)

    # ------------------------------------------------------------------ operations

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

    async def unsubscribe(self, topics: list[str]) -> None:
        for t in topics:
            self._subs.pop(t, None)
        if self._client is not None and self.connected:
            self._client.unsubscribe(topics)

    def publish(
        self,
        topic: str,
        payload: bytes,
        *,
        qos: int = 1,
        retain: bool = False,
        user_properties: dict[str, str] | None = None,
    ) -> asyncio.Future[None]:
        """Queue a publish; the future resolves when the broker has it (PUBACK for QoS 1).

        QoS 1 publishes made while disconnected are kept and sent on reconnect.
        Callers that produce continuously should ``await wait_for_window()`` first.
        """
        assert self._client is not None and self._loop is not None, "start() first"
        props = None
        if user_properties:
            props = _properties(PacketTypes.PUBLISH)
            props.UserProperty = list(user_properties.items())
        fut: asyncio.Future[None] = self._loop.create_future()
        if self._closing:
            fut.set_exception(MqttUnavailable("client closed"))
            return fut
        info = self._client.publish(topic, payload, qos=qos, retain=retain, properties=props)
        if qos == 0:
            if info.rc not in (MQTTErrorCode.MQTT_ERR_SUCCESS, MQTTErrorCode.MQTT_ERR_NO_CONN):
                fut.set_exception(MqttUnavailable(paho.error_string(info.rc)))
            else:
                fut.set_result(None)
            return fut
        if info.rc not in (MQTTErrorCode.MQTT_ERR_SUCCESS, MQTTErrorCode.MQTT_ERR_NO_CONN):
            fut.set_exception(MqttUnavailable(paho.error_string(info.rc)))
            return fut
        self._pending_pub[info.mid] = fut
        return fut

    async def wait_for_window(self) -> None:
        """Block while the number of unacknowledged publishes is at the window size."""
        while len(self._pending_pub) >= self._publish_window and not self._closing:
            self._window_free.clear()
            await self._window_free.wait()

    @property
    def unacked(self) -> int:
        return len(self._pending_pub)

    @property
    def window_full(self) -> bool:
        return len(self._pending_pub) >= self._publish_window

    def ack(self, msg: MqttMessage) -> None:
        """Acknowledge a QoS 1 delivery (manual-ack clients); stale epochs are ignored."""
        if not self._manual_ack or msg.qos == 0 or self._client is None:
            return
        if msg.epoch != self.epoch or not self.connected:
            return  # the broker will redeliver it on the new connection
        self._client.ack(msg.mid, msg.qos)

    # ------------------------------------------------------------------ paho callbacks

    def _threadsafe(self, fn: Callable[..., None]) -> Callable[..., None]:
        def wrapper(*args: Any) -> None:
            if threading.get_ident() == self._loop_thread:
                fn(*args)
            elif self._loop is not None and not self._loop.is_closed():
                self._loop.call_soon_threadsafe(fn, *args)

        return wrapper

    def _on_socket_open(self, client: paho.Client, _ud: Any, sock: Any) -> None:
        assert self._loop is not None
        if client is not self._client or self._closing:
            return
        self._sock = sock
        with contextlib.suppress(OSError, AttributeError):
            # small control packets (commands, acks) must not wait for Nagle + delayed ACK
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 1 << 20)
        self._loop.add_reader(sock, self._read)
        if self._misc_task is None or self._misc_task.done():
            self._misc_task = self._loop.create_task(self._misc_loop())

    def _on_socket_close(self, client: paho.Client, _ud: Any, sock: Any) -> None:
        if self._loop is not None and not self._loop.is_closed():
            with contextlib.suppress(ValueError, OSError):
                self._loop.remove_reader(sock)
                self._loop.remove_writer(sock)
        if sock is self._sock:
            self._sock = None
            self._socket_closed.set()

    def _on_socket_register_write(self, client: paho.Client, _ud: Any, sock: Any) -> None:
        if self._loop is not None and sock is self._sock:
            self._loop.add_writer(sock, self._write)

    def _on_socket_unregister_write(self, client: paho.Client, _ud: Any, sock: Any) -> None:
        if self._loop is not None:
            with contextlib.suppress(ValueError, OSError):
                self._loop.remove_writer(sock)

    def _drop_socket(self) -> None:
        sock = self._sock
        if sock is not None and self._loop is not None and not self._loop.is_closed():
            with contextlib.suppress(ValueError, OSError):
                self._loop.remove_reader(sock)
                self._loop.remove_writer(sock)
        self._sock = None

    def _read(self) -> None:
        c = self._client
        if c is None:
            return
        c.loop_read(max_packets=64)
        # TLS: OpenSSL may hold decrypted bytes the kernel no longer has (a record carries
        # several packets); the socket is not readable again for them, so read them now
        for _ in range(1024):
            sock = self._sock
            if c is not self._client or not isinstance(sock, ssl.SSLSocket) or not sock.pending():
                break
            c.loop_read(max_packets=64)

    def _write(self) -> None:
        if self._client is not None:
            self._client.loop_write()

    async def _misc_loop(self) -> None:
        while not self._closing and self._client is not None:
            await asyncio.sleep(1.0)
            if self._sock is not None:
                self._client.loop_misc()

    def _on_connect(self, client: paho.Client, _ud: Any, flags: Any, rc: ReasonCode, props: Any) -> None:
        if rc.is_failure:
            refused = rc.value in REFUSED_LOGIN
            if not (refused and self._refusal_logged):  # once per outage, not per retry
                log.warning("mqtt %s: connection refused: %s", self.client_id, rc)
            if refused:
                self._refusal_logged = True
                self.refused.set()
            if self._first_connect is not None and not self._first_connect.done():
                err = MqttRefused if refused else MqttUnavailable
                self._first_connect.set_exception(err(f"connection refused: {rc}"))
            return
        self.refused.clear()
        self._refusal_logged = False
        # paho ignores the broker's Receive Maximum; exceeding it makes Mosquitto 2.0 drop
        # publishes silently, so never have more in flight than the broker accepts
        server_max = getattr(props, "ReceiveMaximum", None)
        if isinstance(server_max, int) and server_max > 0:
            # paho's setter refuses an established connection, but this runs before any
            # publish is sent on it; the attribute is what paho's send path consults
            client._max_inflight_messages = min(self._publish_window, server_max, 65000)
        self.epoch += 1
        self.session_present = bool(getattr(flags, "session_present", False))
        self._connected_at = time.monotonic()
        self._connected.set()
        if self._subs:
            self._send_subscribe(list(self._subs.items()))
        if self._first_connect is not None and not self._first_connect.done():
            self._first_connect.set_result(self.session_present)
        log.debug("mqtt %s connected (session_present=%s)", self.client_id, self.session_present)

    def _on_disconnect(self, client: paho.Client, _ud: Any, _flags: Any, rc: ReasonCode, _props: Any) -> None:
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
        if rc.value == SESSION_TAKEN_OVER or (self._persistent and self._quick_drops >= TAKEOVER_DROPS):
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

    def _on_paho_message(self, client: paho.Client, _ud: Any, m: paho.MQTTMessage) -> None:
        if self._on_message is None:
            if self._manual_ack and m.qos:
                client.ack(m.mid, m.qos)
            return
        props = getattr(m, "properties", None)
        up = dict(getattr(props, "UserProperty", None) or [])
        msg = MqttMessage(
            topic=m.topic,
            payload=bytes(m.payload),
            qos=m.qos,
            mid=m.mid,
            retain=bool(m.retain),
            dup=bool(m.dup),
            epoch=self.epoch,
            user_properties=up,
        )
        try:
            self._on_message(msg)
        except Exception:
            log.exception("mqtt %s: message handler failed on %s", self.client_id, m.topic)

    def _on_publish(self, client: paho.Client, _ud: Any, mid: int, rc: ReasonCode, _props: Any) -> None:
        fut = self._pending_pub.pop(mid, None)
        if len(self._pending_pub) < self._publish_window:
            self._window_free.set()
        if fut is None or fut.done():
            return
        if rc is not None and rc.is_failure:
            fut.set_exception(MqttUnavailable(f"publish refused: {rc}"))
        else:
            fut.set_result(None)

    def _send_subscribe(self, subs: list[tuple[str, int]]) -> asyncio.Future[list[ReasonCode]] | None:
        if self._client is None or self._loop is None or not self.connected:
            return None  # sent by _on_connect
        rc, mid = self._client.subscribe(subs)
        if rc != MQTTErrorCode.MQTT_ERR_SUCCESS or mid is None:
            return None
        fut: asyncio.Future[list[ReasonCode]] = self._loop.create_future()
        self._pending_sub[mid] = fut
        return fut

    def _on_subscribe(
        self, client: paho.Client, _ud: Any, mid: int, codes: list[ReasonCode], _p: Any
    ) -> None:
        fut = self._pending_sub.pop(mid, None)
        if fut is not None and not fut.done():
            fut.set_result(list(codes))


__all__ = [
    "REFUSED_LOGIN",
    "MessageHandler",
    "MqttClient",
    "MqttMessage",
    "MqttRefused",
    "MqttUnavailable",
    "SessionTakenOver",
    "Will",
    "parse_url",
]
