"""The one MQTT adapter: paho-mqtt 2 (MQTT 5) driven by the asyncio event loop.

Nothing else in ECHO imports paho. The paho client runs without a thread of its own:
its socket is registered with the event loop (``add_reader``/``add_writer``), so every
paho callback runs on the loop thread and may touch asyncio objects. Only the blocking
TCP connect runs in an executor; the socket callbacks it triggers are handed back to
the loop with ``call_soon_threadsafe``.

What the adapter adds to paho (the parts that need no paho are in ``mqtt_connection``, its
base class, and ``mqtt_types``):

- ``await client.start()`` waits for the CONNACK (``MqttUnavailable`` on failure);
- ``publish()`` returns a future resolved on PUBACK (QoS 1), within the publish window;
- re-subscribing on every reconnect;
- manual acknowledgement of QoS 1 deliveries (``ack(msg)``), ignored for deliveries of an
  earlier connection (their packet ids are meaningless on the new one: the broker
  redelivers them instead);
- payloads over one packet's worth (``mqtt_parts.PART_OVER``) sent in parts and joined
  again on receipt, within a bound (``mqtt_parts``);
- persistent sessions (``clean_start=False`` plus a session expiry) named by client id,
  given up or retried slowly when another process holds the same id (``taken_over``);
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
from .mqtt_connection import QUICK_DROP as QUICK_DROP
from .mqtt_connection import SESSION_TAKEN_OVER as SESSION_TAKEN_OVER
from .mqtt_connection import TAKEOVER_DROPS as TAKEOVER_DROPS
from .mqtt_connection import MqttConnection
from .mqtt_parts import AHEAD, MAX_BYTES, PART_BYTES, PART_OVER, Assembler, split, total_of
from .mqtt_parts import HEADER as PART_HEADER
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

READ_TURN = 0.02  # seconds of reading per turn of the event loop, at most (about)


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


class MqttClient(MqttConnection):
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
        part_over: int = PART_OVER,
        part_bytes: int = PART_BYTES,
        max_assembly_bytes: int = MAX_BYTES,
        whole_payloads: bool = True,
    ) -> None:
        super().__init__(
            url,
            client_id,
            persistent=persistent,
            publish_window=publish_window,
            reconnect_max_delay=reconnect_max_delay,
            yield_session=yield_session,
        )
        self._login = login
        self._tls_context = tls
        self._on_message = on_message
        self._session_expiry = session_expiry if persistent else 0
        self._receive_maximum = receive_maximum
        self._manual_ack = manual_ack
        self._keepalive = keepalive
        self._will = will
        self._part_over = part_over
        self._part_bytes = part_bytes
        self.parts = Assembler(max_assembly_bytes)  # messages arriving in parts
        self._whole_payloads = whole_payloads  # False: such a message keeps them (``chunks``)
        self._senders: set[asyncio.Task[None]] = set()  # messages leaving in parts

        self._loop_thread: int | None = None
        self._client: paho.Client | None = None
        self._pending_sub: dict[int, asyncio.Future[list[ReasonCode]]] = {}
        self._misc_task: asyncio.Task[None] | None = None
        self._closed = asyncio.Event()

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
        await self._first_connection(timeout, offline_ok)

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
        for t in (self._reconnect_task, self._misc_task, *self._senders):
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

    def relogin(self, login: Login) -> None:
        """Use ``login`` from the next (re)connect on (credential rotation)."""
        self._login = login
        if self._client is not None:
            self._client.username_pw_set(login.username, login.password)

    # ------------------------------------------------------------------ operations

    async def unsubscribe(self, topics: list[str]) -> None:
        for t in topics:
            self._subs.pop(t, None)
        if self._client is not None and self.connected:
            self._client.unsubscribe(topics)

    def publish(
        self,
        topic: str,
        payload: bytes | list[bytes],
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
        if not isinstance(payload, bytes | bytearray):  # pieces: parts cut from them, if large
            if total_of(payload) > self._part_over:
                return self._publish_in_parts(topic, payload, qos, retain, user_properties)
            payload = b"".join(payload)
        elif len(payload) > self._part_over:
            return self._publish_in_parts(topic, payload, qos, retain, user_properties)
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

    def _publish_in_parts(
        self,
        topic: str,
        payload: bytes | list[bytes],
        qos: int,
        retain: bool,
        user_properties: dict[str, str] | None,
    ) -> asyncio.Future[None]:
        """A payload over ``part_over`` bytes, as parts (``mqtt_parts``): at most ``AHEAD`` of
        them unacknowledged at a time; the future resolves once every part is acknowledged.
        Cancelling it stops the transfer: no further part is sent (the receiver drops the
        incomplete transfer after ``mqtt_parts.IDLE_SECONDS``)."""
        assert self._loop is not None
        if qos != 1 or retain:
            raise ValueError(f"{len(payload)} bytes go in parts: QoS 1 and not retained only")
        parts = split(payload, self._part_bytes)  # (checks the count before sending any)
        done: asyncio.Future[None] = self._loop.create_future()

        async def send() -> None:
            sent: list[asyncio.Future[None]] = []
            try:
                for part, header in parts:
                    while sum(not f.done() for f in sent) >= AHEAD:
                        await asyncio.wait(
                            [f for f in sent if not f.done()], return_when=asyncio.FIRST_COMPLETED
                        )
                    for f in sent:
                        if f.done() and f.exception() is not None:
                            raise f.exception()  # type: ignore[misc]
                    props = {**(user_properties or {}), PART_HEADER: header}
                    sent.append(self.publish(topic, part, qos=1, user_properties=props))
                await asyncio.gather(*sent)
            except BaseException as e:
                for f in sent:
                    if f.done():
                        f.exception()  # retrieved: the transfer's own future carries the failure
                if not done.done():
                    done.set_exception(e if isinstance(e, Exception) else MqttUnavailable("client closed"))
                    done.exception()
                if not isinstance(e, Exception):
                    raise
            else:
                if not done.done():
                    done.set_result(None)

        task = self._loop.create_task(send())
        self._senders.add(task)
        task.add_done_callback(self._senders.discard)
        done.add_done_callback(lambda f: task.cancel() if f.cancelled() else None)
        return done

    def ack(self, msg: MqttMessage) -> None:
        """Acknowledge a QoS 1 delivery (manual-ack clients; a message that came in parts:
        every part); stale epochs are ignored."""
        if not self._manual_ack or msg.qos == 0 or self._client is None:
            return
        if msg.epoch != self.epoch or not self.connected:
            return  # the broker will redeliver it on the new connection
        self._client.ack(msg.mid, msg.qos)
        for mid in msg.more_mids:
            self._client.ack(mid, msg.qos)

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
        until = time.monotonic() + READ_TURN
        c.loop_read(max_packets=64)
        # TLS: OpenSSL may hold decrypted bytes the kernel no longer has (a record carries
        # several packets); the socket is not readable again for them, so read them now,
        # or, after ``READ_TURN``, in a turn of the loop of their own: a sender that keeps
        # up (a GB in parts) would otherwise hold the loop for the whole transfer, and the
        # process would miss its keepalives and heartbeats
        while True:
            sock = self._sock
            if c is not self._client or not isinstance(sock, ssl.SSLSocket) or not sock.pending():
                break
            if time.monotonic() >= until:
                if self._loop is not None:
                    self._loop.call_soon(self._read)
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
            self._release_parts(self.parts.expire())

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
        self.parts.reset()  # the broker sends the unacknowledged parts again
        self.session_present = bool(getattr(flags, "session_present", False))
        self._connected_at = time.monotonic()
        self._connected.set()
        if self._subs:
            self._send_subscribe(list(self._subs.items()))
        if self._first_connect is not None and not self._first_connect.done():
            self._first_connect.set_result(self.session_present)
        log.debug("mqtt %s connected (session_present=%s)", self.client_id, self.session_present)

    def _on_disconnect(self, client: paho.Client, _ud: Any, _flags: Any, rc: ReasonCode, _props: Any) -> None:
        self._disconnected(rc.value, rc)

    def _on_paho_message(self, client: paho.Client, _ud: Any, m: paho.MQTTMessage) -> None:
        if self._on_message is None:
            if self._manual_ack and m.qos:
                client.ack(m.mid, m.qos)
            return
        props = getattr(m, "properties", None)
        up = dict(getattr(props, "UserProperty", None) or [])
        payload, mid = bytes(m.payload), m.mid
        more_mids: tuple[int, ...] = ()
        chunks: tuple[bytes, ...] = ()
        part = up.pop(PART_HEADER, None)
        if part is not None:  # a message in parts: handed on once whole
            joined, release = self.parts.add(m.topic, part, payload, m.mid)
            if m.qos:
                self._release_parts(release)
            if joined is None:
                return
            mid, more_mids = joined.mids[-1], tuple(joined.mids[:-1])
            if self._whole_payloads:
                payload = joined.payload
            else:
                payload, chunks = b"", tuple(joined.parts)
        msg = MqttMessage(
            topic=m.topic,
            payload=payload,
            qos=m.qos,
            mid=mid,
            retain=bool(m.retain),
            dup=bool(m.dup),
            epoch=self.epoch,
            user_properties=up,
            more_mids=more_mids,
            chunks=chunks,
        )
        try:
            self._on_message(msg)
        except Exception:
            log.exception("mqtt %s: message handler failed on %s", self.client_id, m.topic)

    def _release_parts(self, mids: list[int]) -> None:
        """Acknowledge parts nothing will hand on (a dropped transfer, a duplicate part)."""
        if self._manual_ack and self._client is not None and self.connected:
            for mid in mids:
                self._client.ack(mid, 1)

    def _on_publish(self, client: paho.Client, _ud: Any, mid: int, rc: ReasonCode, _props: Any) -> None:
        self._published(mid, rc)

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
