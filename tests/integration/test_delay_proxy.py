"""The testbed's TCP delay proxy against real sockets (and the real MQTT broker).

It must add its latency in each direction (a round trip costs twice the delay, never
less), deliver every byte intact and in order (half-close included), keep connections
independent (many at once are delayed concurrently, not one after the other), bound
what it buffers, and close a client whose upstream refuses.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import random
import statistics
import time
from collections.abc import AsyncIterator, Callable, Coroutine
from typing import Any
from urllib.parse import urlsplit

import pytest

from echo_cli.devstack import Brokers
from echo_cli.devstack.processes import free_port
from echo_cli.testbed.delay_proxy import DelayProxy, Route
from echo_shared.mqtt import MqttClient

DELAY_MS = 50.0
SLACK_S = 0.15  # scheduling noise allowed above the delay on a loaded 2-core machine

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Coroutine[Any, Any, None]]


async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Echo everything until EOF, then close."""
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    finally:
        writer.close()


class Upstream:
    """A TCP server on a free port, running ``handler`` per connection (tasks tracked, closed)."""

    def __init__(self, handler: Handler) -> None:
        self.handler = handler
        self.tasks: set[asyncio.Task[None]] = set()
        self.server: asyncio.Server | None = None
        self.port = 0

    def _accept(self, r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        t = asyncio.get_running_loop().create_task(self.handler(r, w))
        self.tasks.add(t)
        t.add_done_callback(self.tasks.discard)

    async def __aenter__(self) -> Upstream:
        self.server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        self.port = int(self.server.sockets[0].getsockname()[1])
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self.server is not None
        self.server.close()
        for t in list(self.tasks):
            t.cancel()
        if self.tasks:
            await asyncio.wait(list(self.tasks), timeout=5)
        await self.server.wait_closed()


@pytest.fixture
async def echo_upstream() -> AsyncIterator[Upstream]:
    async with Upstream(echo) as up:
        yield up


def route_to(port: int, delay_ms: float = DELAY_MS, name: str = "test") -> Route:
    return Route("127.0.0.1", 0, "127.0.0.1", port, delay_ms, name)


async def connect(proxy: DelayProxy, name: str = "test") -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    return await asyncio.open_connection("127.0.0.1", proxy.ports[name])


async def round_trips(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> list[float]:
    out = []
    for i in range(n):
        msg = f"ping {i}\n".encode()
        t0 = time.perf_counter()
        writer.write(msg)
        await writer.drain()
        assert await reader.readexactly(len(msg)) == msg
        out.append(time.perf_counter() - t0)
    return out


async def test_a_round_trip_costs_twice_the_delay(echo_upstream: Upstream) -> None:
    r, w = await asyncio.open_connection("127.0.0.1", echo_upstream.port)
    direct = await round_trips(r, w, 10)
    w.close()
    async with DelayProxy([route_to(echo_upstream.port)]) as proxy:
        r, w = await connect(proxy)
        proxied = await round_trips(r, w, 10)
        w.close()
        await w.wait_closed()
    added = 2 * DELAY_MS / 1000
    assert min(proxied) >= added, f"a round trip took {min(proxied) * 1000:.1f} ms < {added * 1000} ms"
    assert statistics.median(proxied) < added + statistics.median(direct) + SLACK_S, proxied


async def test_the_delay_is_added_in_each_direction() -> None:
    """One way each: the upstream sees a byte >= delay after it was sent, and so does the client."""
    arrivals: list[float] = []
    sent_back: list[float] = []

    async def stamp(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readexactly(1)
        arrivals.append(time.perf_counter())
        sent_back.append(time.perf_counter())
        writer.write(b"y")
        await writer.drain()
        await reader.read()  # until the client closes
        writer.close()

    async with Upstream(stamp) as up, DelayProxy([route_to(up.port)]) as proxy:
        r, w = await connect(proxy)
        t_sent = time.perf_counter()
        w.write(b"x")
        await w.drain()
        assert await r.readexactly(1) == b"y"
        t_back = time.perf_counter()
        w.close()
        await w.wait_closed()
    delay = DELAY_MS / 1000
    assert arrivals[0] - t_sent >= delay, "client -> upstream was not delayed"
    assert t_back - sent_back[0] >= delay, "upstream -> client was not delayed"
    assert arrivals[0] - t_sent < delay + SLACK_S
    assert t_back - sent_back[0] < delay + SLACK_S


async def test_bytes_arrive_intact_and_in_order_with_half_close(echo_upstream: Upstream) -> None:
    rng = random.Random(7)
    payload = os.urandom(8 * 1024 * 1024)
    async with DelayProxy([route_to(echo_upstream.port, delay_ms=5)]) as proxy:
        r, w = await connect(proxy)

        async def send() -> None:
            i = 0
            while i < len(payload):  # uneven writes: chunk boundaries must not matter
                n = rng.choice((1, 7, 100, 1500, 4096, 65536, 200_000))
                w.write(payload[i : i + n])
                i += n
                await w.drain()
            w.write_eof()  # half-close: the echo server sees EOF only after every byte

        sender = asyncio.create_task(send())
        received = await r.read()  # until the upstream's close reaches us through the proxy
        await sender
        w.close()
        await w.wait_closed()
    assert len(received) == len(payload)
    assert hashlib.sha256(received).digest() == hashlib.sha256(payload).digest()
    st = proxy.stats["test"]
    assert st.bytes_up == st.bytes_down == len(payload)


async def test_many_connections_are_delayed_concurrently(echo_upstream: Upstream) -> None:
    n, rounds = 100, 3
    async with DelayProxy([route_to(echo_upstream.port)]) as proxy:

        async def client(i: int) -> tuple[list[bytes], list[bytes]]:
            r, w = await connect(proxy)
            sent, got = [], []
            for k in range(rounds):
                msg = f"conn {i} msg {k} ".encode() * (i + 1)
                w.write(msg)
                await w.drain()
                sent.append(msg)
                got.append(await r.readexactly(len(msg)))
            w.close()
            await w.wait_closed()
            return sent, got

        t0 = time.perf_counter()
        results = await asyncio.gather(*(client(i) for i in range(n)))
        took = time.perf_counter() - t0
    for sent, got in results:
        assert got == sent  # each connection gets its own bytes back, in order
    assert proxy.stats["test"].connections == n
    assert proxy.stats["test"].active == 0
    serial = n * rounds * 2 * DELAY_MS / 1000
    # concurrent: about rounds x 2 x delay; one connection after the other would be `serial` (30 s)
    assert took < serial / 10, f"{n} connections took {took:.2f}s"


async def test_a_full_queue_stops_reading_from_the_sender() -> None:
    """A client that does not read: the proxy buffers at most max_chunks, not everything."""
    total = 256 * 1024 * 1024
    written = 0
    stalled = asyncio.Event()

    async def flood(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal written
        block = b"z" * 65536
        try:
            while written < total:
                writer.write(block)
                try:
                    async with asyncio.timeout(0.5):
                        await writer.drain()
                except TimeoutError:
                    stalled.set()  # back-pressure reached the upstream
                    await writer.drain()
                written += len(block)
        finally:
            writer.close()

    async with Upstream(flood) as up, DelayProxy([route_to(up.port, delay_ms=1)], max_chunks=4) as proxy:
        r, w = await connect(proxy)
        async with asyncio.timeout(20):
            await stalled.wait()
        # socket buffers on both hops (a few MiB each at most) + 4 chunks, far from 256 MiB
        assert written < 64 * 1024 * 1024, f"the upstream wrote {written} bytes to a client that reads none"
        first = await r.readexactly(65536)  # and the data still flows once the client reads
        assert first == b"z" * 65536
        w.close()
        await w.wait_closed()


async def test_a_refused_upstream_closes_the_client() -> None:
    dead_port = free_port()
    async with DelayProxy([route_to(dead_port)]) as proxy:
        r, w = await connect(proxy)
        async with asyncio.timeout(5):
            assert await r.read() == b""  # EOF: the proxy closed us
        w.close()
        await w.wait_closed()
    assert proxy.stats["test"].upstream_failures == 1


async def test_mqtt_connack_through_the_proxy(brokers: Brokers) -> None:
    """A real (TLS, authenticating) broker behind the proxy: the TLS handshake and MQTT
    CONNECT -> CONNACK each cost the added round trip, and the login is accepted."""
    url = urlsplit(brokers.mqtt_url)
    assert url.hostname and url.port
    route = Route("127.0.0.1", 0, url.hostname, url.port, DELAY_MS, "mqtt")
    access = brokers.access()
    async with DelayProxy([route]) as proxy:
        proxied = f"mqtts://127.0.0.1:{proxy.ports['mqtt']}"
        client = MqttClient(proxied, "delay-proxy-test", login=access.mqtt, tls=access.tls())
        t0 = time.perf_counter()
        await client.start(timeout=10)
        took = time.perf_counter() - t0
        assert client.connected
        await client.close()
    # TLS 1.3 (one round trip) + CONNECT/CONNACK (one): at least two added round trips
    assert 2 * 2 * DELAY_MS / 1000 <= took < 3 * 2 * DELAY_MS / 1000 + SLACK_S + 0.3
