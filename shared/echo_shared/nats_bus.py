"""NATS connection with the bus middleware: tracing, validation and typed errors.

``request()`` and ``serve()`` are the only ways services talk request/reply over NATS:
the middleware opens the CLIENT/SERVER spans, carries the trace context in NATS
headers, validates bodies against their pydantic models and turns typed errors into
``ErrorReply`` messages (and back into exceptions on the caller's side).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import nats
from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.errors import NoRespondersError
from nats.errors import TimeoutError as NatsTimeout
from nats.js import JetStreamContext
from nats.js.api import (
    AckPolicy,
    ConsumerConfig,
    DeliverPolicy,
    KeyValueConfig,
    RetentionPolicy,
    StorageType,
    StreamConfig,
)
from nats.js.errors import APIError, BadRequestError, BucketNotFoundError
from opentelemetry import trace
from opentelemetry.trace import SpanKind, Status, StatusCode
from pydantic import ValidationError

from .credentials import Access
from .errors import (
    BrokerUnavailable,
    DependencyUnavailable,
    EchoError,
    NotFoundError,
    RequestTimeout,
    SpecError,
)
from .messages import ErrorReply, Message
from .names import Names
from .outage import Backoff, Outage, dependency_of
from .telemetry import extract, inject
from .urls import split_urls

log = logging.getLogger(__name__)
M = TypeVar("M", bound=Message)
R = TypeVar("R", bound=Message)
T = TypeVar("T")


def connection_callbacks(
    name: str,
    on_reconnect: Callable[[], Awaitable[None]] | None = None,
    closing: Callable[[], bool] | None = None,
    on_disconnect: Callable[[], None] | None = None,
) -> dict[str, Any]:
    """``nats.connect`` callbacks that log a connection's outage once when it begins and once
    when it ends (with its length), instead of nats-py's traceback per reconnect attempt;
    ``on_reconnect`` runs after each reconnect; ``closing()`` true: a disconnect we asked for."""
    outage = Outage(f"NATS connection {name}", log)

    async def error_cb(e: Exception) -> None:
        if closing is None or not closing():
            outage.failed(e)

    async def disconnected_cb() -> None:
        if on_disconnect is not None:
            on_disconnect()
        if closing is None or not closing():
            outage.failed("disconnected")

    async def reconnected_cb() -> None:
        outage.ok()
        if on_reconnect is not None:
            await on_reconnect()

    return {"error_cb": error_cb, "disconnected_cb": disconnected_cb, "reconnected_cb": reconnected_cb}


class RemoteError(EchoError):
    def __init__(self, reply: ErrorReply) -> None:
        super().__init__(reply.error)
        self.reply = reply


DATA_MAX_AGE = 7 * 24 * 3600.0


JETSTREAM_READY_WITHIN = 60.0  # seconds a cluster may take to place a new stream at start


async def jetstream_ready(what: str, op: Callable[[], Awaitable[T]]) -> T:
    """Run a JetStream administration ``op``, again while the cluster cannot place it yet (its
    nodes still meeting: "no suitable peers", no meta leader, no responders) for up to
    ``JETSTREAM_READY_WITHIN`` seconds. Other errors and a cluster never ready are raised."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + JETSTREAM_READY_WITHIN
    backoff = 0.2
    while True:
        try:
            return await op()
        except (APIError, NoRespondersError, NatsTimeout) as e:
            code = getattr(e, "err_code", None)
            status = getattr(e, "code", None)
            not_ready = code in (10005, 10008, 10023) or status == 503 or not isinstance(e, APIError)
            if not not_ready or loop.time() >= deadline:
                raise
            log.info("%s: JetStream not ready yet (%s); trying again", what, e)
        await asyncio.sleep(backoff)
        backoff = min(backoff * 2, 2.0)


def nats_servers(url: str) -> list[str]:
    """A NATS URL, or several separated by commas (the nodes of a cluster): what to dial."""
    return split_urls(url)


async def ensure_data_plane(js: JetStreamContext, names: Names, replicas: int = 1) -> None:
    """Create (or keep) the work-queue stream of NATS channels and their progress bucket
    (``replicas``: copies on a cluster's nodes, so one node's loss loses nothing)."""
    cfg = StreamConfig(
        name=names.data_stream,
        subjects=[names.data_subjects],
        retention=RetentionPolicy.WORK_QUEUE,
        storage=StorageType.FILE,
        max_age=DATA_MAX_AGE,
        num_replicas=replicas,
    )

    async def stream() -> None:
        try:
            await js.add_stream(cfg)
        except BadRequestError as e:
            if getattr(e, "err_code", None) == 10005:  # no peers yet: not "it exists"
                raise

    async def bucket() -> None:
        try:
            await js.key_value(names.progress_bucket)
        except BucketNotFoundError:
            try:  # direct gets: a device's read permission can then name one key
                await js.create_key_value(
                    KeyValueConfig(bucket=names.progress_bucket, history=1, direct=True, replicas=replicas)
                )
            except BadRequestError as e:
                if getattr(e, "err_code", None) == 10005:
                    raise  # no peers yet; else it was created meanwhile by another

    await jetstream_ready(names.data_stream, stream)
    await jetstream_ready(names.progress_bucket, bucket)


class NatsBus:
    """A NATS connection owned by one service. Async context manager."""

    def __init__(
        self,
        url: str,
        name: str,
        *,
        connect_timeout: float = 30.0,
        access: Access | None = None,
        replicas: int = 1,
    ) -> None:
        self.url = url
        self.name = name
        self.replicas = replicas  # JetStream streams and buckets this service creates
        self._options = access.nats_options() if access is not None else {}
        self._connect_timeout = connect_timeout
        self._nc: NatsClient | None = None
        self._js: JetStreamContext | None = None
        self._subs: list[Subscription] = []
        self._tracer = trace.get_tracer("echo.nats")
        # set when the connection drops: requests in flight then fail at once (their answer,
        # if any, went to the lost connection) instead of waiting out their timeout
        self._dropped = asyncio.Event()

    def _on_disconnect(self) -> None:
        self._dropped.set()
        self._dropped = asyncio.Event()

    async def __aenter__(self) -> NatsBus:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    @property
    def nc(self) -> NatsClient:
        if self._nc is None:
            raise BrokerUnavailable("NATS not connected")
        return self._nc

    @property
    def js(self) -> JetStreamContext:
        if self._js is None:
            self._js = self.nc.jetstream()
        return self._js

    async def start(self) -> None:
        """Connect, retrying until ``connect_timeout`` (services may start before NATS)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._connect_timeout
        delay = 0.1
        while True:
            try:
                self._nc = await nats.connect(
                    nats_servers(self.url),
                    name=self.name,
                    max_reconnect_attempts=-1,
                    reconnect_time_wait=0.5,
                    connect_timeout=2,
                    allow_reconnect=True,
                    **connection_callbacks(
                        self.name, closing=lambda: self._nc is None, on_disconnect=self._on_disconnect
                    ),
                    **self._options,
                )
                return
            except Exception as e:  # nats raises several unrelated types on connect
                if loop.time() > deadline:
                    raise BrokerUnavailable(f"NATS at {self.url} unreachable: {e}") from e
                log.info("waiting for NATS at %s: %s", self.url, e)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 2.0)

    async def close(self, timeout: float = 3.0) -> None:
        nc, self._nc = self._nc, None
        if nc is None:
            return
        with contextlib.suppress(Exception):
            await asyncio.wait_for(nc.drain(), timeout)
        with contextlib.suppress(Exception):
            await nc.close()

    # ---------------------------------------------------------------- request / reply

    async def _request(self, subject: str, data: bytes, timeout: float) -> Msg:
        """``nc.request``, failing at once with ``RequestTimeout`` if the connection drops
        while it waits (a reply sent meanwhile is lost: asking again is the caller's call)."""
        dropped = self._dropped
        asked = asyncio.ensure_future(self.nc.request(subject, data, timeout=timeout, headers=inject()))
        gone = asyncio.ensure_future(dropped.wait())
        try:
            await asyncio.wait({asked, gone}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            gone.cancel()
            if not asked.done():
                asked.cancel()
        if not asked.done() or asked.cancelled():
            raise RequestTimeout(f"the connection to NATS dropped while waiting for an answer on {subject}")
        return asked.result()

    async def request(self, subject: str, msg: Message, reply_type: type[R], *, timeout: float = 5.0) -> R:
        with self._tracer.start_as_current_span(f"{subject} request", kind=SpanKind.CLIENT) as span:
            span.set_attribute("messaging.system", "nats")
            span.set_attribute("messaging.destination.name", subject)
            try:
                resp = await self._request(subject, msg.to_bytes(), timeout)
            except NoRespondersError as e:
                raise RequestTimeout(f"no service answers on {subject}") from e
            except NatsTimeout as e:
                raise RequestTimeout(f"no answer on {subject} within {timeout}s") from e
            data = resp.data
            if resp.headers and resp.headers.get("echo-error") == "1":
                err = ErrorReply.from_bytes(data)
                span.set_status(Status(StatusCode.ERROR, err.error))
                raise _error_from_reply(err)
            result: R = reply_type.from_bytes(data)
            return result

    async def serve(
        self,
        subject: str,
        queue: str,
        request_type: type[M],
        handler: Callable[[M], Awaitable[Message]],
    ) -> Subscription:
        outage = Outage(f"{subject}: a dependency", log)

        async def on_msg(m: Msg) -> None:
            ctx = extract(m.headers or {})
            with self._tracer.start_as_current_span(
                f"{subject} handle", context=ctx, kind=SpanKind.SERVER
            ) as span:
                span.set_attribute("messaging.system", "nats")
                span.set_attribute("messaging.destination.name", subject)
                try:
                    req = request_type.from_bytes(m.data)
                    reply: Message = await handler(req)
                    headers = None
                    outage.ok()
                except ValidationError as e:
                    reply = ErrorReply(
                        error=f"bad request on {subject}: {e.error_count()} problem(s)",
                        kind="bad_request",
                        problems=[
                            {"loc": ".".join(map(str, x["loc"])), "msg": x["msg"], "type": x["type"]}
                            for x in e.errors()
                        ],
                    )
                    headers = {"echo-error": "1"}
                except SpecError as e:
                    reply = ErrorReply(error=str(e), kind="spec", problems=[p.as_dict() for p in e.problems])
                    headers = {"echo-error": "1"}
                except NotFoundError as e:
                    reply = ErrorReply(error=str(e), kind="not_found")
                    headers = {"echo-error": "1"}
                except EchoError as e:
                    dep = dependency_of(e) if isinstance(e, DependencyUnavailable) else None
                    kind = f"unavailable:{dep}" if dep else type(e).__name__
                    reply = ErrorReply(error=str(e), kind=kind)
                    headers = {"echo-error": "1"}
                except Exception as e:
                    dep = dependency_of(e)
                    if dep is not None:  # Redis or a broker out of reach: once per outage, no traceback
                        outage.what = f"{subject}: {dep}"
                        outage.failed(e)
                        reply = ErrorReply(
                            error=f"{dep} is unavailable ({type(e).__name__})", kind=f"unavailable:{dep}"
                        )
                        headers = {"echo-error": "1"}
                        span.record_exception(e)
                        if m.reply:
                            await self.nc.publish(m.reply, reply.to_bytes(), headers=headers)
                        return
                    log.exception("handler for %s failed", subject)
                    span.record_exception(e)
                    reply = ErrorReply(error=f"internal error: {type(e).__name__}", kind="internal")
                    headers = {"echo-error": "1"}
                if headers:
                    span.set_status(
                        Status(StatusCode.ERROR, reply.error if isinstance(reply, ErrorReply) else "")
                    )
                if m.reply:
                    await self.nc.publish(m.reply, reply.to_bytes(), headers=headers)

        sub = await self.nc.subscribe(subject, queue=queue, cb=on_msg)
        self._subs.append(sub)
        return sub

    # ---------------------------------------------------------------- data plane (JetStream)

    async def ensure_data_plane(self, names: Names) -> None:
        """The NATS channels' stream and progress bucket (the master prepares them; devices
        may only look them up)."""
        await ensure_data_plane(self.js, names, self.replicas)

    # ---------------------------------------------------------------- events (JetStream)

    async def ensure_stream(self, name: str, subjects: list[str], *, max_age: float = 24 * 3600) -> None:
        cfg = StreamConfig(
            name=name,
            subjects=subjects,
            retention=RetentionPolicy.LIMITS,
            max_age=max_age,
            max_msgs=1_000_000,
            num_replicas=self.replicas,
        )

        async def create() -> None:
            try:
                await self.js.add_stream(cfg)
            except BadRequestError as e:
                if getattr(e, "err_code", None) == 10005:  # no peers yet: not "it exists"
                    raise
                await self.js.update_stream(cfg)

        await jetstream_ready(name, create)

    async def publish_event(self, subject: str, msg: Message) -> None:
        with self._tracer.start_as_current_span(f"{subject} publish", kind=SpanKind.PRODUCER):
            await self.js.publish(subject, msg.to_bytes(), headers=inject())

    async def follow(
        self,
        stream: str,
        subject: str,
        durable: str,
        handler: Callable[[Msg], Awaitable[None]],
        stop: asyncio.Event,
        *,
        batch: int = 64,
    ) -> None:
        """Consume ``subject`` from a JetStream stream with a durable consumer until ``stop``.

        The consumer's position survives restarts, so what was published while this
        service was down is handled when it returns. A message is acked after its
        handler returns; a handler that raises gets it redelivered.
        """
        fetching = Outage(f"JetStream consumer {durable}", log)
        handling = Outage(f"handling {subject} ({durable})", log)
        backoff = Backoff(0.2, 5.0)
        sub = None
        try:
            while not stop.is_set():
                try:
                    if sub is None:  # (again, after an outage: the consumer may be new)
                        sub = await self.js.pull_subscribe(
                            subject,
                            durable=durable,
                            stream=stream,
                            config=ConsumerConfig(
                                ack_policy=AckPolicy.EXPLICIT, deliver_policy=DeliverPolicy.NEW, ack_wait=30
                            ),
                        )
                    msgs = await sub.fetch(batch=batch, timeout=0.5)
                except TimeoutError:
                    fetching.ok()
                    continue
                except Exception as e:  # NATS restarting, JetStream not ready, the consumer gone
                    fetching.failed(e)
                    if sub is not None:
                        with contextlib.suppress(Exception):
                            await sub.unsubscribe()
                        sub = None
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(backoff.next()):
                            await stop.wait()
                    continue
                fetching.ok()
                backoff.reset()
                for m in msgs:
                    try:
                        await handler(m)
                    except Exception as e:
                        if dependency_of(e) is not None:
                            handling.failed(e)  # once per outage; redelivered until it is over
                        else:
                            log.exception("handling %s failed; it will be redelivered", m.subject)
                        with contextlib.suppress(Exception):
                            await m.nak(delay=1.0)
                        continue
                    handling.ok()
                    with contextlib.suppress(Exception):  # unacked: redelivered after ack_wait
                        await m.ack()
        finally:
            if sub is not None:
                with contextlib.suppress(Exception):
                    await sub.unsubscribe()

    async def subscribe_raw(self, subject: str, cb: Callable[[Msg], Awaitable[Any]]) -> Subscription:
        sub = await self.nc.subscribe(subject, cb=cb)
        self._subs.append(sub)
        return sub


def _error_from_reply(err: ErrorReply) -> EchoError:
    from .errors import Problem

    if err.kind == "spec":
        return SpecError([Problem.of(p) for p in err.problems])
    if err.kind.startswith("unavailable:"):
        return DependencyUnavailable(err.kind.split(":", 1)[1], f"(answered by another service) {err.error}")
    return RemoteError(err)
