"""A user-space TCP proxy that adds a fixed one-way latency in each direction.

The testbed's stand-in for ``tc netem delay`` (not every kernel has ``sch_netem``; this
one does not). Each *route* listens on one address and forwards every connection to one
upstream address; every chunk read from either side is written to the other side
``delay`` seconds after it was read, so a request/response round trip through the proxy
takes ``2 * delay`` more than without it. Per connection and per direction:

- order is preserved: one FIFO and one writer per direction, and the due times of the
  chunks never decrease;
- bytes are never dropped, merged out of order or altered (chunks are forwarded as read);
- the queue is bounded (``max_chunks`` chunks of at most ``CHUNK`` bytes); a full queue
  stops reading from the sender, so TCP back-pressure reaches it;
- a half-close (EOF) is forwarded after the same delay; a reset or error on either side
  closes both sides of the connection.

Used in-process (``DelayProxy`` is an async context manager) and as a process by the
testbed runner::

    python -m echo_cli.testbed.delay_proxy --route 10.77.3.1:41000=127.0.0.1:1883/40 ...

(one ``--route LISTEN_HOST:PORT=UPSTREAM_HOST:PORT/DELAY_MS`` per device and broker).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import logging
import signal
import socket
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field

log = logging.getLogger("echo.testbed.proxy")

CHUNK = 64 * 1024
MAX_CHUNKS = 256  # per direction: at most 16 MiB queued, far above any delay x bandwidth here
CLOSE_TIMEOUT = 5.0


class RouteError(ValueError):
    """A route given on the command line (or in code) is malformed."""


@dataclass(frozen=True)
class Route:
    """Connections to ``listen`` are forwarded to ``upstream`` with ``delay_ms`` added each way."""

    listen_host: str
    listen_port: int
    upstream_host: str
    upstream_port: int
    delay_ms: float
    name: str = ""

    def __post_init__(self) -> None:
        if self.delay_ms < 0:
            raise RouteError(f"route {self.label}: delay_ms must be >= 0, got {self.delay_ms}")
        for what, port in (("listen port", self.listen_port), ("upstream port", self.upstream_port)):
            if not 0 <= port <= 65535:
                raise RouteError(f"route {self.label}: {what} must be 0..65535, got {port}")

    @property
    def label(self) -> str:
        return self.name or f"{self.listen_host}:{self.listen_port}"

    @classmethod
    def parse(cls, text: str) -> Route:
        """``[NAME@]LISTEN_HOST:PORT=UPSTREAM_HOST:PORT/DELAY_MS``."""
        name, at, rest = text.rpartition("@")
        if not at:
            name, rest = "", text
        listen, eq, upstream_delay = rest.partition("=")
        upstream, slash, delay = upstream_delay.rpartition("/")
        if not eq or not slash:
            raise RouteError(f"route {text!r}: expected [NAME@]LISTEN_HOST:PORT=UPSTREAM_HOST:PORT/DELAY_MS")
        lh, lp = _host_port(text, "listen address", listen)
        uh, up = _host_port(text, "upstream address", upstream)
        try:
            ms = float(delay)
        except ValueError:
            raise RouteError(f"route {text!r}: delay {delay!r} is not a number of milliseconds") from None
        return cls(lh, lp, uh, up, ms, name)

    def spec(self) -> str:
        """The inverse of ``parse``."""
        prefix = f"{self.name}@" if self.name else ""
        return (
            f"{prefix}{self.listen_host}:{self.listen_port}="
            f"{self.upstream_host}:{self.upstream_port}/{self.delay_ms:g}"
        )


def _host_port(text: str, what: str, value: str) -> tuple[str, int]:
    host, colon, port = value.rpartition(":")
    if not colon or not host or not port.isdigit():
        raise RouteError(f"route {text!r}: {what} {value!r} is not HOST:PORT")
    return host, int(port)


@dataclass
class RouteStats:
    connections: int = 0
    active: int = 0
    upstream_failures: int = 0
    bytes_up: int = 0  # client -> upstream
    bytes_down: int = 0  # upstream -> client


def _nodelay(writer: asyncio.StreamWriter) -> None:
    sock = writer.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


async def _close(writer: asyncio.StreamWriter) -> None:
    writer.close()
    with contextlib.suppress(Exception):
        async with asyncio.timeout(CLOSE_TIMEOUT):
            await writer.wait_closed()


@dataclass
class DelayProxy:
    """Serve ``routes`` until closed. A route with ``listen_port`` 0 gets a free port (see ``ports``)."""

    routes: Sequence[Route]
    max_chunks: int = MAX_CHUNKS
    stats: dict[str, RouteStats] = field(default_factory=dict)
    _servers: list[asyncio.Server] = field(default_factory=list)
    _conns: set[asyncio.Task[None]] = field(default_factory=set)
    ports: dict[str, int] = field(default_factory=dict)

    async def start(self) -> None:
        try:
            for route in self.routes:
                self.stats[route.label] = RouteStats()
                server = await asyncio.start_server(
                    functools.partial(self._accept, route),
                    route.listen_host,
                    route.listen_port,
                    reuse_address=True,
                )
                self._servers.append(server)
                self.ports[route.label] = int(server.sockets[0].getsockname()[1])
                log.info(
                    "route %s: %s:%d -> %s:%d, +%g ms each way",
                    route.label,
                    route.listen_host,
                    self.ports[route.label],
                    route.upstream_host,
                    route.upstream_port,
                    route.delay_ms,
                )
        except BaseException:
            await self.close()
            raise

    async def close(self) -> None:
        """Stop listening and end every connection (idempotent)."""
        for server in self._servers:
            server.close()
        for task in list(self._conns):
            task.cancel()
        if self._conns:
            await asyncio.wait(list(self._conns), timeout=CLOSE_TIMEOUT)
        for server in self._servers:
            with contextlib.suppress(Exception):
                async with asyncio.timeout(CLOSE_TIMEOUT):
                    await server.wait_closed()
        self._servers.clear()

    async def __aenter__(self) -> DelayProxy:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # ------------------------------------------------------------------ connections

    def _accept(self, route: Route, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.get_running_loop().create_task(self._connection(route, reader, writer))
        self._conns.add(task)
        task.add_done_callback(self._conns.discard)

    async def _connection(
        self, route: Route, c_reader: asyncio.StreamReader, c_writer: asyncio.StreamWriter
    ) -> None:
        st = self.stats[route.label]
        st.connections += 1
        st.active += 1
        peer = c_writer.get_extra_info("peername")
        try:
            try:
                u_reader, u_writer = await asyncio.open_connection(route.upstream_host, route.upstream_port)
            except OSError as e:
                st.upstream_failures += 1
                log.warning(
                    "route %s: upstream %s:%d refused the connection from %s: %s",
                    route.label,
                    route.upstream_host,
                    route.upstream_port,
                    peer,
                    e,
                )
                return
            _nodelay(c_writer)
            _nodelay(u_writer)
            delay = route.delay_ms / 1000.0
            try:
                async with asyncio.TaskGroup() as tg:
                    tg.create_task(self._direction(c_reader, u_writer, delay, st, up=True))
                    tg.create_task(self._direction(u_reader, c_writer, delay, st, up=False))
            except* OSError as eg:  # a reset or a write to a closed peer: close both sides
                log.debug("route %s: connection from %s ended: %s", route.label, peer, eg.exceptions[0])
            except* Exception as eg:
                log.warning("route %s: connection from %s failed: %r", route.label, peer, eg.exceptions[0])
            finally:
                await _close(u_writer)
        finally:
            await _close(c_writer)
            st.active -= 1

    async def _direction(
        self,
        src: asyncio.StreamReader,
        dst: asyncio.StreamWriter,
        delay: float,
        st: RouteStats,
        *,
        up: bool,
    ) -> None:
        """Forward ``src`` to ``dst``, each chunk ``delay`` seconds after it was read; EOF too."""
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue(self.max_chunks)

        async def read() -> None:
            while True:
                data = await src.read(CHUNK)
                await queue.put((loop.time() + delay, data))
                if not data:
                    return

        async def write() -> None:
            while True:
                due, data = await queue.get()
                wait = due - loop.time()
                if wait > 0:
                    await asyncio.sleep(wait)
                if not data:
                    if dst.can_write_eof() and not dst.is_closing():
                        dst.write_eof()
                    return
                dst.write(data)
                if up:
                    st.bytes_up += len(data)
                else:
                    st.bytes_down += len(data)
                await dst.drain()

        async with asyncio.TaskGroup() as tg:
            tg.create_task(read())
            tg.create_task(write())


# ---------------------------------------------------------------------- process entry


def parse_args(argv: Sequence[str] | None = None) -> list[Route]:
    p = argparse.ArgumentParser(
        prog="python -m echo_cli.testbed.delay_proxy",
        description="TCP proxy adding a fixed latency in each direction (the testbed's netem).",
    )
    p.add_argument(
        "--route",
        action="append",
        required=True,
        metavar="[NAME@]LISTEN_HOST:PORT=UPSTREAM_HOST:PORT/DELAY_MS",
        help="one listener forwarding to one upstream with DELAY_MS added each way (repeatable)",
    )
    a = p.parse_args(argv)
    try:
        return [Route.parse(r) for r in a.route]
    except RouteError as e:
        p.error(str(e))
        raise  # unreachable: p.error exits


async def serve(routes: Sequence[Route]) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    async with DelayProxy(routes) as proxy:
        log.info("delay proxy ready: %d routes", len(routes))
        await stop.wait()
        for label, st in proxy.stats.items():
            log.info(
                "route %s: %d connections (%d upstream failures), %d bytes up, %d bytes down",
                label,
                st.connections,
                st.upstream_failures,
                st.bytes_up,
                st.bytes_down,
            )


def main(argv: Sequence[str] | None = None) -> int:
    routes = parse_args(argv)
    logging.basicConfig(
        level=logging.INFO, stream=sys.stdout, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    try:
        asyncio.run(serve(routes))
    except OSError as e:
        log.error("delay proxy cannot start: %s", e)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
