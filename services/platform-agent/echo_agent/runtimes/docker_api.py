"""A small asyncio client of the Docker Engine API: what the container runtime needs.

Why not the ``docker`` SDK: it is synchronous (requests), so streaming a container's stdin
and stdout would need threads, and it cannot tell when the engine registered a wait before
the container starts (needed with auto-remove, or the exit code can be lost). This client
speaks HTTP/1.1 over the engine's socket (``DOCKER_HOST``: ``unix://`` or ``tcp://``, default
``unix:///var/run/docker.sock``; TLS is not supported), one connection per request:

- ``request`` — a plain call (JSON in, JSON out); a status >= 400 raises ``EngineError``
  with the engine's message;
- ``open_stream`` — a call whose response body streams (``/wait``, ``/images/create``,
  ``/events``): it returns once the status line and headers arrived, the body is read later
  (``read_body``, or line by line as it comes: ``body_lines``);
- ``attach`` — ``/containers/{id}/attach`` hijacks the connection: afterwards it carries
  the container's stdin one way and its multiplexed stdout/stderr frames (``Demux``) the
  other way; ``write_eof()`` on it closes the container's stdin (``StdinOnce``).

The Engine API's paths are used without a version prefix, so the engine serves its own
current version (which keeps the semantics relied on here: ``/wait?condition=removed``
answers its headers at once, since API 1.30).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import struct
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote, urlencode, urlsplit

import orjson

DEFAULT_HOST = "unix:///var/run/docker.sock"
PING_TIMEOUT = 1.0
MAX_BODY = 64 * 1024 * 1024

STDIN, STDOUT, STDERR = 0, 1, 2


def engine_url() -> str:
    """The engine's address: ``DOCKER_HOST``, else the default socket."""
    return os.environ.get("DOCKER_HOST") or DEFAULT_HOST


class EngineUnavailable(ConnectionError):
    """No Docker engine answers at the address."""

    def __init__(self, url: str, error: object) -> None:
        self.url = url
        super().__init__(f"no Docker engine at {url}: {error}")


class EngineError(RuntimeError):
    """The engine answered with an error status."""

    def __init__(self, status: int, message: str, what: str = "") -> None:
        self.status, self.message = status, message
        super().__init__(f"{what + ': ' if what else ''}Docker engine error {status}: {message}")


@dataclass(frozen=True)
class Address:
    scheme: str  # unix | tcp
    path: str = ""
    host: str = ""
    port: int = 0

    @classmethod
    def parse(cls, url: str) -> Address:
        parts = urlsplit(url)
        if parts.scheme == "unix":
            return cls("unix", path=parts.path or "/var/run/docker.sock")
        if parts.scheme in ("tcp", "http"):
            return cls("tcp", host=parts.hostname or "localhost", port=parts.port or 2375)
        raise EngineUnavailable(url, f"unsupported address scheme {parts.scheme!r} (use unix:// or tcp://)")

    @property
    def host_header(self) -> str:
        return "docker" if self.scheme == "unix" else f"{self.host}:{self.port}"


def ping_sync(url: str, timeout: float = PING_TIMEOUT) -> str | None:
    """None when an engine answers ``GET /_ping`` within ``timeout`` seconds in all, else
    why not (blocking: for ``available()``, which runs once when the agent registers)."""
    deadline = time.monotonic() + timeout

    def left() -> float:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError(f"no answer to /_ping within {timeout:g}s")
        return remaining

    try:
        addr = Address.parse(url)
        if addr.scheme == "unix":
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.settimeout(left())
            sock.connect(addr.path)
        else:
            sock = socket.create_connection((addr.host, addr.port), timeout=left())
        with sock:
            sock.settimeout(left())
            sock.sendall(
                f"GET /_ping HTTP/1.1\r\nHost: {addr.host_header}\r\nConnection: close\r\n\r\n".encode()
            )
            data = b""
            while b"\r\n" not in data and len(data) < 4096:
                sock.settimeout(left())
                chunk = sock.recv(4096)
                if not chunk:
                    break
                data += chunk
    except EngineUnavailable as e:
        return str(e)
    except OSError as e:  # TimeoutError included
        return str(EngineUnavailable(url, str(e) or type(e).__name__))
    status = data.split(b"\r\n", 1)[0].split(b" ")
    if len(status) < 2 or status[1] != b"200":
        return str(EngineUnavailable(url, f"/_ping answered {data[:80]!r}"))
    return None


class Demux:
    """Splits the attach stream of a container without a TTY into (stream, bytes) frames:
    an 8-byte header (stream: 0 stdin, 1 stdout, 2 stderr; 3 zero bytes; big-endian
    uint32 size) then the payload. Partial frames wait for more data."""

    def __init__(self) -> None:
        self.buf = b""

    def feed(self, data: bytes) -> list[tuple[int, bytes]]:
        self.buf += data
        out: list[tuple[int, bytes]] = []
        while len(self.buf) >= 8:
            stream, size = self.buf[0], struct.unpack(">I", self.buf[4:8])[0]
            if len(self.buf) < 8 + size:
                break
            out.append((stream, self.buf[8 : 8 + size]))
            self.buf = self.buf[8 + size :]
        return out


def frame(stream: int, payload: bytes) -> bytes:
    """One multiplexed frame (what the engine sends; for tests)."""
    return bytes([stream, 0, 0, 0]) + struct.pack(">I", len(payload)) + payload


@dataclass
class Response:
    status: int
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""

    def json(self) -> Any:
        return orjson.loads(self.body) if self.body.strip() else None

    def message(self) -> str:
        try:
            value = self.json()
        except orjson.JSONDecodeError:
            return self.body.decode(errors="replace").strip()[:500]
        if isinstance(value, dict) and "message" in value:
            return str(value["message"])
        return self.body.decode(errors="replace").strip()[:500]


async def read_head(reader: asyncio.StreamReader) -> Response:
    line = await reader.readline()
    parts = line.decode("latin-1").split(" ", 2)
    if len(parts) < 2 or not parts[0].startswith("HTTP/"):
        raise EngineError(0, f"not an HTTP response: {line[:80]!r}")
    headers: dict[str, str] = {}
    while True:
        h = await reader.readline()
        if h in (b"\r\n", b"\n", b""):
            break
        k, _, v = h.decode("latin-1").partition(":")
        headers[k.strip().lower()] = v.strip()
    return Response(int(parts[1]), headers)


async def read_body(reader: asyncio.StreamReader, head: Response) -> bytes:
    if head.headers.get("transfer-encoding", "").lower() == "chunked":
        out = bytearray()
        while True:
            size_line = await reader.readline()
            if not size_line:
                break
            size = int(size_line.split(b";")[0].strip() or b"0", 16)
            if size == 0:
                await reader.readline()
                break
            out += await reader.readexactly(size)
            await reader.readexactly(2)
            if len(out) > MAX_BODY:
                raise EngineError(head.status, "response body too large")
        return bytes(out)
    if "content-length" in head.headers:
        return await reader.readexactly(int(head.headers["content-length"]))
    if head.status in (204, 304) or head.status < 200:
        return b""
    return await reader.read(MAX_BODY)


async def body_lines(reader: asyncio.StreamReader, head: Response) -> AsyncIterator[bytes]:
    """A streamed response body (``/events``) line by line as it arrives, until it ends."""
    if head.headers.get("transfer-encoding", "").lower() != "chunked":
        while line := await reader.readline():
            yield line
        return
    buf = b""
    while True:
        size_line = await reader.readline()
        if not size_line:
            break
        size = int(size_line.split(b";")[0].strip() or b"0", 16)
        if size == 0:
            break
        buf += await reader.readexactly(size)
        await reader.readexactly(2)
        *lines, buf = buf.split(b"\n")
        for line in lines:
            yield line + b"\n"
        if len(buf) > MAX_BODY:
            raise EngineError(head.status, "streamed line too long")
    if buf:
        yield buf


class Engine:
    """The Docker engine at ``url`` (see the module doc)."""

    def __init__(self, url: str | None = None, connect_timeout: float = 5.0) -> None:
        self.url = url or engine_url()
        self.addr = Address.parse(self.url)
        self.connect_timeout = connect_timeout

    async def _connect(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        try:
            async with asyncio.timeout(self.connect_timeout):
                if self.addr.scheme == "unix":
                    return await asyncio.open_unix_connection(self.addr.path, limit=1 << 20)
                return await asyncio.open_connection(self.addr.host, self.addr.port, limit=1 << 20)
        except (OSError, TimeoutError) as e:
            raise EngineUnavailable(self.url, str(e) or "connection timed out") from e

    def _head(
        self, method: str, path: str, params: dict[str, Any] | None, body: bytes | None, extra: str
    ) -> bytes:
        target = quote(path, safe="/:@")
        if params:
            target += "?" + urlencode({k: v for k, v in params.items() if v is not None})
        head = f"{method} {target} HTTP/1.1\r\nHost: {self.addr.host_header}\r\n{extra}"
        if body is not None:
            head += f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n"
        return (head + "\r\n").encode("latin-1") + (body or b"")

    async def open_stream(
        self,
        method: str,
        path: str,
        params: dict[str, Any] | None = None,
        json: Any = None,
        *,
        what: str = "",
    ) -> tuple[Response, asyncio.StreamReader, asyncio.StreamWriter]:
        """Send a request; return its status and headers with the connection, whose body
        the caller reads (``read_body``) and which the caller closes."""
        reader, writer = await self._connect()
        try:
            body = orjson.dumps(json) if json is not None else None
            writer.write(self._head(method, path, params, body, "Connection: close\r\n"))
            await writer.drain()
            head = await read_head(reader)
            if head.status >= 400:
                head.body = await read_body(reader, head)
                raise EngineError(head.status, head.message(), what)
        except BaseException:
            writer.close()
            raise
        return head, reader, writer

    async def request(
        self,
        method: str,
        path: str,
        params: dict[str, Any] | None = None,
        json: Any = None,
        *,
        what: str = "",
    ) -> Response:
        head, reader, writer = await self.open_stream(method, path, params, json, what=what)
        try:
            head.body = await read_body(reader, head)
        finally:
            writer.close()
        return head

    async def ping(self, timeout: float = PING_TIMEOUT) -> None:
        try:
            async with asyncio.timeout(timeout):
                await self.request("GET", "/_ping")
        except TimeoutError as e:
            raise EngineUnavailable(self.url, f"no answer to /_ping within {timeout:g}s") from e
        except EngineError as e:
            raise EngineUnavailable(self.url, e) from e

    async def attach(self, container: str) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        """Hijack a connection for the container's stdin, stdout and stderr."""
        reader, writer = await self._connect()
        try:
            params = {"stream": 1, "stdin": 1, "stdout": 1, "stderr": 1}
            writer.write(
                self._head(
                    "POST",
                    f"/containers/{container}/attach",
                    params,
                    None,
                    "Connection: Upgrade\r\nUpgrade: tcp\r\n",
                )
            )
            await writer.drain()
            head = await read_head(reader)
            if head.status >= 400:
                head.body = await read_body(reader, head)
                raise EngineError(head.status, head.message(), f"attach to {container}")
            if head.status not in (101, 200):
                raise EngineError(head.status, "unexpected answer to attach", f"attach to {container}")
        except BaseException:
            writer.close()
            raise
        return reader, writer


async def close_quietly(writer: asyncio.StreamWriter | None) -> None:
    if writer is None:
        return
    writer.close()
    with contextlib.suppress(Exception):
        await asyncio.wait_for(writer.wait_closed(), 1.0)
