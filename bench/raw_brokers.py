"""Raw broker baselines: plain pub -> sub rates of the brokers ECHO runs on, no ECHO code.

- MQTT: paho-mqtt directly (the benchmark measures the broker, so it bypasses ECHO's one
  MQTT adapter on purpose): MQTT 5, QoS 1, one publisher client and one subscriber
  client, each with paho's threaded network loop (``loop_start``); the publisher allows
  1000 messages in flight, the subscriber announces a receive maximum of 1000 (the
  broker's ``max_inflight_messages`` in the dev-stack config). Caveat: paho 2.2's
  ``Client._update_inflight`` walks every outstanding message on every PUBACK, so its
  cost per message grows with the in-flight window; a large window makes paho itself
  the bottleneck. ``stream_edge`` therefore also sweeps smaller windows.
- NATS: nats-py core publish/subscribe (no JetStream).

Publisher and subscriber run in separate processes (the publisher is a spawned child),
as ECHO's source and sink run in separate agents; otherwise both would share one GIL.
The rate is measured at the subscriber, from the first message received to the last.
Timestamps are ``time.monotonic()`` (CLOCK_MONOTONIC, comparable across processes).
"""

from __future__ import annotations

import asyncio
import contextlib
import multiprocessing as mp
import ssl
import threading
import time
import uuid
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlparse

import nats
import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

INFLIGHT = 1000
RECEIVE_MAXIMUM = 1000
TIMEOUT_S = 120.0


@dataclass(frozen=True)
class Auth:
    """A login and the CA of secured brokers (picklable: it crosses to publisher processes)."""

    username: str | None = None
    password: str | None = field(default=None, repr=False)
    ca_file: str | None = None

    @classmethod
    def of(cls, brokers: Any, kind: str) -> Auth | None:
        """The test identity's login at ``kind`` ("mqtt" or "nats"); None: no login known
        (brokers made without a bundle)."""
        if not brokers.secure:
            return None
        a = brokers.access("tester")
        login = a.mqtt if kind == "mqtt" else a.nats
        return cls(login.username, login.password, str(a.ca_file)) if login else None

    def nats_options(self, url: str) -> dict[str, Any]:
        opts: dict[str, Any] = {"user": self.username, "password": self.password}
        if url.startswith("tls://"):
            opts["tls"] = ssl.create_default_context(cafile=self.ca_file)
        return opts


def _nats_options(url: str, auth: Auth | None) -> dict[str, Any]:
    return auth.nats_options(url) if auth is not None else {}


def _mqtt_client(client_id: str) -> paho.Client:
    return paho.Client(
        callback_api_version=CallbackAPIVersion.VERSION2,
        client_id=client_id,
        protocol=MQTTProtocolVersion.MQTTv5,
    )


def _connect(c: paho.Client, url: str, props: Properties | None = None, auth: Auth | None = None) -> None:
    u = urlparse(url)
    if u.scheme == "mqtts":
        c.tls_set_context(ssl.create_default_context(cafile=auth.ca_file if auth else None))
    if auth is not None and auth.username:
        c.username_pw_set(auth.username, auth.password)
    connected = threading.Event()
    c.on_connect = lambda *_a: connected.set()
    c.connect(u.hostname or "127.0.0.1", u.port or 1883, clean_start=True, properties=props)
    c.loop_start()
    if not connected.wait(10):
        raise RuntimeError(f"no CONNACK from {url}")


# ------------------------------------------------------------------------ MQTT


def _mqtt_publisher(
    url: str,
    topic: str,
    count: int,
    size: int,
    inflight: int,
    ready: Any,
    go: Any,
    out: Any,
    auth: Auth | None = None,
) -> None:
    c = _mqtt_client(f"bench-pub-{uuid.uuid4().hex[:8]}")
    c.max_inflight_messages_set(inflight)
    c.max_queued_messages_set(0)
    acked = 0
    all_acked = threading.Event()

    def on_publish(*_a: Any) -> None:
        nonlocal acked
        acked += 1
        if acked >= count:
            all_acked.set()

    c.on_publish = on_publish
    _connect(c, url, auth=auth)
    ready.set()
    go.wait(30)
    payload = b"x" * size
    t0 = time.monotonic()
    for _ in range(count):
        c.publish(topic, payload, qos=1)
    t_queued = time.monotonic()
    all_acked.wait(TIMEOUT_S)
    t_acked = time.monotonic()
    c.disconnect()
    c.loop_stop()
    out.put({"t_start": t0, "t_queued": t_queued, "t_acked": t_acked, "acked": acked})


def mqtt_pub_sub(
    url: str, count: int, size: int = 256, inflight: int = INFLIGHT, auth: Auth | None = None
) -> dict[str, Any]:
    ctx = mp.get_context("spawn")
    ready, go, out = ctx.Event(), ctx.Event(), ctx.Queue()
    topic = f"bench/raw/{uuid.uuid4().hex[:8]}"
    got = 0
    first = last = 0.0
    done = threading.Event()

    def on_message(_c: Any, _ud: Any, _m: Any) -> None:
        nonlocal got, first, last
        now = time.monotonic()
        if got == 0:
            first = now
        got += 1
        last = now
        if got >= count:
            done.set()

    subscribed = threading.Event()
    sub = _mqtt_client(f"bench-sub-{uuid.uuid4().hex[:8]}")
    sub.on_message = on_message
    sub.on_subscribe = lambda *_a: subscribed.set()
    props = Properties(PacketTypes.CONNECT)
    props.ReceiveMaximum = RECEIVE_MAXIMUM
    proc = ctx.Process(
        target=_mqtt_publisher, args=(url, topic, count, size, inflight, ready, go, out, auth), daemon=True
    )
    proc.start()
    try:
        _connect(sub, url, props, auth)
        sub.subscribe(topic, qos=1)
        if not subscribed.wait(10) or not ready.wait(30):
            raise RuntimeError("raw mqtt: subscriber or publisher not ready")
        go.set()
        done.wait(TIMEOUT_S)
        pub = out.get(timeout=TIMEOUT_S)
    finally:
        sub.disconnect()
        sub.loop_stop()
        proc.join(10)
        if proc.is_alive():
            proc.kill()
            proc.join(5)
    return _figures(count, size, got, first, last, pub) | {
        "qos": 1,
        "protocol": "MQTT 5 (paho-mqtt, loop_start)",
        "max_inflight": inflight,
        "subscriber_receive_maximum": RECEIVE_MAXIMUM,
        "publisher_all_acked_after_s": round(pub["t_acked"] - pub["t_start"], 3),
    }


# ------------------------------------------------------------------------ NATS


def _nats_publisher(
    url: str, subject: str, count: int, size: int, ready: Any, go: Any, out: Any, auth: Auth | None = None
) -> None:
    async def main() -> None:
        nc = await nats.connect(url, **_nats_options(url, auth))
        ready.set()
        await asyncio.get_running_loop().run_in_executor(None, go.wait, 30)
        payload = b"x" * size
        t0 = time.monotonic()
        for _ in range(count):
            await nc.publish(subject, payload)
        t_queued = time.monotonic()
        await nc.flush(timeout=TIMEOUT_S)
        t_acked = time.monotonic()
        await nc.close()
        out.put({"t_start": t0, "t_queued": t_queued, "t_acked": t_acked})

    asyncio.run(main())


async def _nats_sub(url: str, count: int, size: int, auth: Auth | None) -> dict[str, Any]:
    ctx = mp.get_context("spawn")
    ready, go, out = ctx.Event(), ctx.Event(), ctx.Queue()
    subject = f"bench.raw.{uuid.uuid4().hex[:8]}"
    got = 0
    first = last = 0.0
    done = asyncio.Event()

    async def on_msg(_m: Any) -> None:
        nonlocal got, first, last
        now = time.monotonic()
        if got == 0:
            first = now
        got += 1
        last = now
        if got >= count:
            done.set()

    loop = asyncio.get_running_loop()
    nc = await nats.connect(url, **_nats_options(url, auth))
    proc = ctx.Process(
        target=_nats_publisher, args=(url, subject, count, size, ready, go, out, auth), daemon=True
    )
    try:
        await nc.subscribe(
            subject,
            cb=on_msg,
            pending_msgs_limit=count + 1024,
            pending_bytes_limit=(count + 1024) * (size + 128),
        )
        await nc.flush()
        proc.start()
        if not await loop.run_in_executor(None, ready.wait, 30):
            raise RuntimeError("raw nats: publisher not ready")
        go.set()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(done.wait(), TIMEOUT_S)
        pub = await loop.run_in_executor(None, out.get, True, TIMEOUT_S)
    finally:
        await nc.close()
        if proc.pid is not None:
            await loop.run_in_executor(None, proc.join, 10)
            if proc.is_alive():
                proc.kill()
                proc.join(5)
    return _figures(count, size, got, first, last, pub) | {"protocol": "NATS core (nats-py)"}


def nats_pub_sub(url: str, count: int, size: int = 256, auth: Auth | None = None) -> dict[str, Any]:
    return asyncio.run(_nats_sub(url, count, size, auth))


# ------------------------------------------------------------------------ figures


def _figures(
    count: int, size: int, got: int, first: float, last: float, pub: dict[str, Any]
) -> dict[str, Any]:
    span = last - first
    rate = (got - 1) / span if got > 1 and span > 0 else 0.0
    end_to_end = last - pub["t_start"]
    return {
        "msgs_per_s": round(rate, 1),
        "payload_bytes": size,
        "sent": count,
        "received": got,
        "lost": count - got,
        "measured_span_s": round(span, 3),
        "publish_start_to_last_received_msgs_per_s": round(got / end_to_end, 1) if end_to_end > 0 else None,
        "publisher_send_rate_msgs_per_s": round(count / max(pub["t_queued"] - pub["t_start"], 1e-9), 1),
        "mb_per_s": round(rate * size / 1e6, 2),
    }
