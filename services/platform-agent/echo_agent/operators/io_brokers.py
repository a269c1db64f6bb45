"""Broker operators: ``io.mqtt_source``/``io.mqtt_sink`` and ``io.nats_source``/``io.nats_sink``.

They connect in ``open()``: a broker that cannot be reached within ``connect_timeout``
fails the task with the URL and the device, instead of leaving it hanging. MQTT goes
through the project's adapter (``echo_shared.mqtt``); NATS through nats-py, core
subjects (at most once: what arrives while the task is away is lost).

Sources are endless (they run until the task is stopped). Sinks publish a whole batch,
then wait for the broker (MQTT PUBACKs, a NATS flush) before returning, so the input is
acknowledged only once its records reached the broker (at least once).

Payloads: ``format: json`` maps a JSON object to a record (any other JSON value becomes
``{"payload": value}``; a message that is not JSON is dropped, counted and, the first
time, logged); ``format: text`` makes ``{"payload": "<text>"}``, and a text sink
publishes the record's ``field`` (a string as is, anything else as JSON).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
import uuid
from collections import deque
from collections.abc import AsyncIterator
from pathlib import Path

import orjson
from nats.aio.client import Client as NatsClient
from nats.aio.subscription import Subscription

from echo_shared.catalogue.io import (
    MqttSinkConfig,
    MqttSourceConfig,
    NatsSinkConfig,
    NatsSourceConfig,
)
from echo_shared.credentials import Login, client_tls, is_tls_url, same_broker
from echo_shared.mqtt import MqttClient, MqttMessage, MqttUnavailable

from .base import Operator, Record, SourceOperator, TaskContext

log = logging.getLogger(__name__)
LoginConfig = MqttSourceConfig | MqttSinkConfig | NatsSourceConfig | NatsSinkConfig


class BrokerUnreachable(ConnectionError):
    """The broker an operator's config names cannot be reached (or none is configured)."""


class PublishTimeout(TimeoutError):
    pass


class _Payloads:
    """Decoding and encoding by ``format``, counting what cannot be converted."""

    def __init__(self, op: str, fmt: str, field: str = "payload") -> None:
        self.op, self.fmt, self.field = op, fmt, field
        self.bad = 0

    def decode(self, data: bytes, ctx: TaskContext) -> Record | None:
        if self.fmt == "text":
            return {"payload": data.decode("utf-8", errors="replace")}
        try:
            value = orjson.loads(data)
        except orjson.JSONDecodeError as e:
            self._bad(ctx, f"a message that is not JSON ({e}): {data[:200]!r}")
            return None
        return value if isinstance(value, dict) else {"payload": value}

    def encode(self, record: Record, ctx: TaskContext) -> bytes | None:
        if self.fmt == "json":
            return orjson.dumps(record)
        value = record.get(self.field)
        if value is None:
            self._bad(ctx, f"a record without field {self.field!r}: {str(record)[:200]}")
            return None
        return value.encode() if isinstance(value, str) else orjson.dumps(value)

    def _bad(self, ctx: TaskContext, what: str) -> None:
        self.bad += 1
        if self.bad == 1:
            ctx.log.warning("%s: dropped %s (later ones are counted)", self.op, what)


def _url(op: str, configured: str | None, device_url: str | None, ctx: TaskContext, kind: str) -> str:
    url = configured or device_url
    if not url:
        raise BrokerUnreachable(
            f"{op}: device {ctx.device} has no {kind} URL (its agent was started without "
            f"ECHO_{kind}_URL) and config.url is not set"
        )
    return url


def _login(cfg: LoginConfig, ctx: TaskContext, kind: str) -> tuple[Login | None, ssl.SSLContext | None]:
    """The device's own login at its own broker (no config.url, or the device's broker: the
    master granted the topic), else the config's (username + a password file on the device)."""
    own = ctx.mqtt_url if kind == "MQTT" else ctx.nats_url
    a = ctx.access
    if cfg.url is None or same_broker(cfg.url, own):
        if a is None:
            return None, None
        return (a.mqtt if kind == "MQTT" else a.nats), a.tls()
    login = None
    if cfg.username:
        password = ""
        if cfg.password_file:
            try:
                password = Path(cfg.password_file).read_text().strip()
            except OSError as e:
                raise BrokerUnreachable(f"cannot read password_file {cfg.password_file}: {e}") from e
        login = Login(cfg.username, password)
    # a broker of your own: the system's CAs, the config's and the device's (e.g. a sibling broker)
    tls = None
    if is_tls_url(cfg.url):
        tls = client_tls(None, Path(cfg.ca_file) if cfg.ca_file else None, a.ca_file if a else None)
    return login, tls


# ---------------------------------------------------------------------- MQTT


class MqttSource(SourceOperator):
    """``io.mqtt_source``: every message on ``topic`` as a record; runs until stopped.

    Messages are acknowledged (QoS 1) once their record was handed on; at most
    ``max_pending`` wait (the broker holds back the rest); beyond it the oldest are
    dropped and counted (only QoS 0 floods get there).
    """

    config: MqttSourceConfig

    def __init__(self, config: MqttSourceConfig) -> None:
        super().__init__(config)
        self.pending: deque[MqttMessage] = deque()
        self.dropped = 0
        self._arrived = asyncio.Event()
        self._client: MqttClient | None = None
        self._watch: asyncio.Task[None] | None = None
        self.payloads = _Payloads("io.mqtt_source", config.format)

    async def open(self, ctx: TaskContext) -> None:
        await super().open(ctx)
        cfg = self.config
        url = _url("io.mqtt_source", cfg.url, ctx.mqtt_url, ctx, "MQTT")
        login, tls = _login(cfg, ctx, "MQTT")
        suffix = "" if cfg.persistent else f"-{uuid.uuid4().hex[:8]}"
        client = MqttClient(
            url,
            f"echo-mqtt-source-{ctx.dataflow}-{ctx.task}{suffix}",
            on_message=self._on_message,
            persistent=cfg.persistent,
            receive_maximum=cfg.max_pending,
            manual_ack=True,
            login=login,
            tls=tls,
        )
        try:
            await client.start(timeout=cfg.connect_timeout)
            await client.subscribe(cfg.topic, qos=cfg.qos, timeout=cfg.connect_timeout)
        except (MqttUnavailable, TimeoutError, OSError) as e:
            await client.close()
            raise BrokerUnreachable(
                f"io.mqtt_source: cannot subscribe to {cfg.topic!r} at {url} from device {ctx.device} "
                f"within {cfg.connect_timeout:g} s: {e}"
            ) from e
        self._client = client
        self._watch = asyncio.create_task(self._wake_on_takeover(client))

    async def _wake_on_takeover(self, client: MqttClient) -> None:
        await client.taken_over.wait()
        self._arrived.set()

    def _on_message(self, msg: MqttMessage) -> None:  # on the loop thread (the adapter's rule)
        self.pending.append(msg)
        if len(self.pending) > self.config.max_pending:
            old = self.pending.popleft()
            self.dropped += 1
            if self._client is not None:
                self._client.ack(old)
            if self.dropped == 1:
                self.ctx.log.warning(
                    "io.mqtt_source: more than %d messages waiting; dropping the oldest",
                    self.config.max_pending,
                )
        self._arrived.set()

    async def generate(self) -> AsyncIterator[Record]:
        client = self._client
        assert client is not None, "open() first"
        cfg = self.config
        while True:
            while not self.pending:
                if client.taken_over.is_set():
                    raise BrokerUnreachable("io.mqtt_source: another copy of this task took over its session")
                self._arrived.clear()
                await self._arrived.wait()
            msg = self.pending.popleft()
            record = self.payloads.decode(msg.payload, self.ctx)
            if record is not None:
                if cfg.topic_field:
                    record[cfg.topic_field] = msg.topic
                yield record
            client.ack(msg)

    async def close(self) -> None:
        if self._watch is not None:
            self._watch.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watch
            self._watch = None
        client, self._client = self._client, None
        if client is not None:
            await client.close()


class MqttSink(Operator):
    """``io.mqtt_sink``: publishes every record on ``topic``; a batch is done when acked."""

    config: MqttSinkConfig
    wants_batches = True  # records of stream edges are gathered: one broker round trip per batch
    batch_count = 500
    batch_seconds = 0.02

    def __init__(self, config: MqttSinkConfig) -> None:
        super().__init__(config)
        self._client: MqttClient | None = None
        self.published = 0
        self.payloads = _Payloads("io.mqtt_sink", config.format, config.field)

    async def open(self, ctx: TaskContext) -> None:
        await super().open(ctx)
        cfg = self.config
        url = _url("io.mqtt_sink", cfg.url, ctx.mqtt_url, ctx, "MQTT")
        login, tls = _login(cfg, ctx, "MQTT")
        client = MqttClient(
            url, f"echo-mqtt-sink-{ctx.dataflow}-{ctx.task}-{uuid.uuid4().hex[:8]}", login=login, tls=tls
        )
        try:
            await client.start(timeout=cfg.connect_timeout)
        except (MqttUnavailable, OSError) as e:
            raise BrokerUnreachable(
                f"io.mqtt_sink: MQTT broker {url} unreachable from device {ctx.device} "
                f"within {cfg.connect_timeout:g} s: {e}"
            ) from e
        self._client = client

    async def process(self, record: Record) -> None:
        await self.process_batch([record])

    async def process_batch(self, records: list[Record]) -> None:
        client = self._client
        assert client is not None, "open() first"
        cfg = self.config
        futures: list[asyncio.Future[None]] = []
        for record in records:
            payload = self.payloads.encode(record, self.ctx)
            if payload is None:
                continue
            await client.wait_for_window()
            futures.append(client.publish(cfg.topic, payload, qos=cfg.qos, retain=cfg.retain))
        if futures:
            try:
                await asyncio.wait_for(asyncio.gather(*futures), cfg.publish_timeout)
            except TimeoutError as e:
                raise PublishTimeout(
                    f"io.mqtt_sink: the broker did not accept {len(futures)} message(s) on "
                    f"{cfg.topic!r} within {cfg.publish_timeout:g} s"
                ) from e
        self.published += len(futures)

    async def close(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            await client.close()


# ---------------------------------------------------------------------- NATS


async def _nats_connect(
    op: str, url: str, timeout: float, ctx: TaskContext, cfg: NatsSourceConfig | NatsSinkConfig
) -> NatsClient:
    nc = NatsClient()
    login, tls = _login(cfg, ctx, "NATS")
    options: dict[str, object] = {}
    if login is not None:
        options.update(user=login.username, password=login.password)
    if tls is not None and is_tls_url(url):
        options["tls"] = tls

    async def on_error(e: Exception) -> None:
        log.debug("%s: NATS %s: %s", op, url, e)

    try:
        await asyncio.wait_for(
            nc.connect(
                url,
                name=f"echo-{ctx.dataflow}-{ctx.task}",
                connect_timeout=max(1, min(int(timeout), 5)),
                allow_reconnect=True,
                max_reconnect_attempts=-1,
                reconnect_time_wait=1,
                error_cb=on_error,
                **options,  # type: ignore[arg-type]
            ),
            timeout,
        )
    except Exception as e:  # nats-py raises several unrelated types on connect
        with contextlib.suppress(Exception):
            await nc.close()
        raise BrokerUnreachable(
            f"{op}: NATS server {url} unreachable from device {ctx.device} within {timeout:g} s: "
            f"{type(e).__name__} {e}"
        ) from e
    return nc


async def _nats_close(nc: NatsClient | None) -> None:
    if nc is not None:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(nc.close(), 3.0)


class NatsSource(SourceOperator):
    """``io.nats_source``: every message on ``subject`` as a record; runs until stopped.

    At most ``max_pending`` messages wait; beyond it nats-py drops new ones (a slow
    consumer), which core NATS allows (at most once).
    """

    config: NatsSourceConfig

    def __init__(self, config: NatsSourceConfig) -> None:
        super().__init__(config)
        self._nc: NatsClient | None = None
        self._sub: Subscription | None = None
        self.payloads = _Payloads("io.nats_source", config.format)

    async def open(self, ctx: TaskContext) -> None:
        await super().open(ctx)
        cfg = self.config
        url = _url("io.nats_source", cfg.url, ctx.nats_url, ctx, "NATS")
        self._nc = await _nats_connect("io.nats_source", url, cfg.connect_timeout, ctx, cfg)
        try:
            self._sub = await self._nc.subscribe(
                cfg.subject, queue=cfg.queue or "", pending_msgs_limit=cfg.max_pending
            )
            await asyncio.wait_for(self._nc.flush(), cfg.connect_timeout)  # the server has the subscription
        except Exception as e:
            await self.close()
            raise BrokerUnreachable(
                f"io.nats_source: cannot subscribe to {cfg.subject!r} at {url}: {e}"
            ) from e

    async def generate(self) -> AsyncIterator[Record]:
        assert self._sub is not None, "open() first"
        sub, cfg = self._sub, self.config
        while True:
            msg = await sub.next_msg(timeout=None)
            record = self.payloads.decode(msg.data, self.ctx)
            if record is not None:
                if cfg.subject_field:
                    record[cfg.subject_field] = msg.subject
                yield record

    async def close(self) -> None:
        nc, self._nc, self._sub = self._nc, None, None
        await _nats_close(nc)


class NatsSink(Operator):
    """``io.nats_sink``: publishes every record on ``subject``; a batch is done when flushed."""

    config: NatsSinkConfig
    wants_batches = True  # records of stream edges are gathered: one broker round trip per batch
    batch_count = 500
    batch_seconds = 0.02

    def __init__(self, config: NatsSinkConfig) -> None:
        super().__init__(config)
        self._nc: NatsClient | None = None
        self.published = 0
        self.payloads = _Payloads("io.nats_sink", config.format, config.field)

    async def open(self, ctx: TaskContext) -> None:
        await super().open(ctx)
        url = _url("io.nats_sink", self.config.url, ctx.nats_url, ctx, "NATS")
        self._nc = await _nats_connect("io.nats_sink", url, self.config.connect_timeout, ctx, self.config)

    async def process(self, record: Record) -> None:
        await self.process_batch([record])

    async def process_batch(self, records: list[Record]) -> None:
        nc = self._nc
        assert nc is not None, "open() first"
        cfg = self.config
        n = 0
        for record in records:
            payload = self.payloads.encode(record, self.ctx)
            if payload is not None:
                await nc.publish(cfg.subject, payload)
                n += 1
        if n:
            try:
                await asyncio.wait_for(
                    nc.flush(timeout=max(1, int(cfg.publish_timeout))), cfg.publish_timeout
                )
            except Exception as e:
                raise PublishTimeout(
                    f"io.nats_sink: the server did not confirm {n} message(s) on {cfg.subject!r} "
                    f"within {cfg.publish_timeout:g} s: {type(e).__name__} {e}"
                ) from e
        self.published += n

    async def close(self) -> None:
        nc, self._nc = self._nc, None
        await _nats_close(nc)


OPERATORS: dict[str, type[Operator]] = {
    "io.mqtt_source": MqttSource,
    "io.mqtt_sink": MqttSink,
    "io.nats_source": NatsSource,
    "io.nats_sink": NatsSink,
}
