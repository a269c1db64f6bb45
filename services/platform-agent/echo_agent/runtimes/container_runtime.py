"""The container runtime: ``container`` runs an image through the Docker engine.

The container speaks the process protocol (``lines``, ``batch``, ``file``; see
``echo_agent.runtimes.stdio``) on its stdin and stdout. Config:
``echo_shared.catalogue.runtimes.ContainerConfig``.

Each run (or, in lines mode, the task's one long-running container) is:

1. ``POST /containers/create`` with ``create_request(...)``: the image, command/entrypoint,
   env (only ``ECHO_DATAFLOW``, ``ECHO_TASK``, ``ECHO_DEVICE`` and the config's ``env``:
   nothing of the agent's environment, no broker URL, no credential), stdin open
   and attached once (``OpenStdin``, ``StdinOnce``, no TTY), ``AutoRemove``, network
   ``none`` unless configured, memory and CPU limits (the config's ``memory_mb``/``cpus``,
   else the task's ``resources``: ``Memory`` = ``memory_mb`` MiB, at least 6, ``NanoCpus``
   = ``cpu`` x 1e9; 0: none), ``echo.*`` labels, and in file
   mode two bind mounts: the input file read-only at ``/echo/in/<name>`` (what ``{input}``
   becomes) and the output's directory at ``/echo/out`` (``{output}`` is
   ``/echo/out/<name>``);
2. attach (stdin, stdout, stderr on one hijacked connection), then
   ``/wait?condition=removed`` (its headers arrive once the wait is registered, so the exit
   code cannot be lost to the auto-remove), then ``/events`` for its ``oom`` and ``die``
   (the engine's OOM kill, which an auto-removed container's ``State.OOMKilled`` could not
   be asked for afterwards), then start;
3. stdout and stderr are demultiplexed into bounded pipes; EOF on stdin is a half-close of
   the attach connection; the exit code comes from the wait; a container the engine
   OOM-killed fails its task with ``memory limit exceeded: 64 MiB (resources.memory_mb)``
   (without the events, an exit 137 under a memory limit says the limit may have been
   exceeded);
4. a failed, timed-out or cancelled run is removed with ``DELETE ?force=1``.

``open()`` fails when no engine answers (``no Docker engine at unix:///var/run/docker.sock:
...``) or when the image is missing and may not be pulled (``pull: never``); ``pull:
missing`` (default) pulls it once, ``always`` pulls on every open. The runtime is off unless
the device enables it (``echo-agent --runtime container``; ``echo_agent.runtimes.gating``),
and even then the agent declares it only when an engine answers a ping within a second
(``available()``, cached), so placement avoids devices without one and the agent refuses
container tasks there.

Paths in bind mounts are the agent's: an agent that itself runs in a container needs its
data directory at the same path on the host.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import uuid
from dataclasses import dataclass
from typing import Any

import orjson

from echo_shared.catalogue.runtimes import ContainerConfig

from ..operators.base import Operator, TaskContext
from .docker_api import (
    STDERR,
    STDOUT,
    Demux,
    Engine,
    EngineError,
    EngineUnavailable,
    close_quietly,
    engine_url,
    ping_sync,
    read_body,
)
from .limits_container import MemoryLimit, OomWatch, Stream, memory_limit
from .stdio import LINE_LIMIT, Child, Run, substitute
from .stdio_operator import StdioOperator

IN_DIR = "/echo/in"
OUT_DIR = "/echo/out"
PIPE_HIGH_WATER = 1 << 20  # bytes of stdout/stderr buffered before the attach stream is paused
PULL_TIMEOUT = 900.0

log = logging.getLogger(__name__)

_pings: dict[str, str | None] = {}


def available() -> str | None:
    """None when a Docker engine answers a ping within a second (cached per address)."""
    url = engine_url()
    if url not in _pings:
        _pings[url] = ping_sync(url)
    return _pings[url]


# ---------------------------------------------------------------------------- the request


@dataclass(frozen=True)
class Mount:
    host: str
    container: str
    read_only: bool

    @property
    def bind(self) -> str:
        return f"{self.host}:{self.container}:{'ro' if self.read_only else 'rw'}"


def file_mounts(run: Run) -> tuple[list[Mount], str | None, str | None]:
    """Bind mounts of a file-mode run, and what ``{input}`` / ``{output}`` become inside."""
    mounts: list[Mount] = []
    inside_in = inside_out = None
    if run.input is not None:
        inside_in = f"{IN_DIR}/{run.input.name}"
        mounts.append(Mount(os.path.abspath(run.input), inside_in, True))
    if run.output is not None:
        inside_out = f"{OUT_DIR}/{run.output.name}"
        mounts.append(Mount(os.path.abspath(run.output.parent), OUT_DIR, False))
    return mounts, inside_in, inside_out


def create_request(
    cfg: ContainerConfig,
    *,
    dataflow: str,
    task: str,
    device: str,
    run: Run = Run(),
    memory_mb: int | None = None,
    cpu: float | None = None,
) -> dict[str, Any]:
    """The body of ``POST /containers/create`` for one run (a pure function). ``memory_mb``
    and ``cpu``: the task's resources, the limits when the config sets none."""
    mounts, inside_in, inside_out = file_mounts(run)

    def argv(items: list[str] | None) -> list[str] | None:
        return None if items is None else substitute(items, run, input_as=inside_in, output_as=inside_out)

    env = {"ECHO_DATAFLOW": dataflow, "ECHO_TASK": task, "ECHO_DEVICE": device, **cfg.env}
    host: dict[str, Any] = {"AutoRemove": True, "NetworkMode": cfg.network}
    if mounts:
        host["Binds"] = [m.bind for m in mounts]
    memory = memory_limit(cfg, memory_mb)
    if memory is not None:
        host["Memory"] = memory.mb * 1024 * 1024
    cpus = cfg.cpus if cfg.cpus is not None else cpu
    if cpus:
        host["NanoCpus"] = round(cpus * 1e9)
    body: dict[str, Any] = {
        "Image": cfg.image,
        "Env": [f"{k}={v}" for k, v in env.items()],
        "AttachStdin": True,
        "AttachStdout": True,
        "AttachStderr": True,
        "OpenStdin": True,
        "StdinOnce": True,
        "Tty": False,
        "Labels": {"echo.dataflow": dataflow, "echo.task": task, "echo.device": device},
        "HostConfig": host,
    }
    if cfg.command is not None:
        body["Cmd"] = argv(cfg.command)
    if cfg.entrypoint is not None:
        body["Entrypoint"] = argv(cfg.entrypoint)
    if cfg.workdir is not None:
        body["WorkingDir"] = cfg.workdir
    return body


def image_reference(image: str) -> str:
    """``busybox`` -> ``busybox:latest`` (pulling an untagged name would pull every tag)."""
    if "@" in image or ":" in image.rsplit("/", 1)[-1]:
        return image
    return f"{image}:latest"


# ---------------------------------------------------------------------------- a running container


class Pipe:
    """A bounded byte stream between the attach pump (writer) and the protocol (reader).

    The pump waits while ``high`` bytes are buffered, unless the reader is waiting for more
    (a line longer than ``high``, or ``read()`` to EOF), so memory stays bounded by what
    the reader asks for and a fast container is slowed down instead."""

    def __init__(self, high: int = PIPE_HIGH_WATER, limit: int = LINE_LIMIT) -> None:
        self.high, self.limit = high, limit
        self.buf = bytearray()
        self.ended = False
        self.starved = False
        self.data = asyncio.Event()  # for the reader: more bytes, or the end
        self.room = asyncio.Event()  # for the writer: the reader took bytes, or wants more
        self.room.set()

    async def write(self, data: bytes) -> None:
        while len(self.buf) >= self.high and not self.starved and not self.ended:
            self.room.clear()
            await self.room.wait()
        self.buf += data
        self.data.set()

    def end(self) -> None:
        self.ended = True
        self.data.set()
        self.room.set()

    async def _more(self) -> None:
        self.data.clear()
        self.starved = True
        self.room.set()
        try:
            await self.data.wait()
        finally:
            self.starved = False

    async def readline(self) -> bytes:
        while True:
            i = self.buf.find(b"\n")
            if i >= 0:
                return self._take(i + 1)
            if len(self.buf) > self.limit:
                raise ValueError(f"line longer than {self.limit} bytes")
            if self.ended:
                return self._take(len(self.buf))
            await self._more()

    async def read(self, n: int = -1) -> bytes:
        while not self.ended and (n < 0 or not self.buf):
            await self._more()
        return self._take(len(self.buf) if n < 0 else min(n, len(self.buf)))

    def _take(self, n: int) -> bytes:
        out = bytes(self.buf[:n])
        del self.buf[:n]
        self.room.set()
        return out


class ContainerChild(Child):
    """A started container: stdin on the attach connection, stdout/stderr demultiplexed."""

    def __init__(
        self,
        engine: Engine,
        container: str,
        what: str,
        attach: tuple[asyncio.StreamReader, asyncio.StreamWriter],
        wait: tuple[asyncio.StreamReader, asyncio.StreamWriter, Any],
        events: Stream | None = None,
        memory: MemoryLimit | None = None,
    ) -> None:
        self.engine, self.container, self.what = engine, container, what
        self.oom = OomWatch(what, memory, events)  # the engine's OOM kill (``limits_container``)
        self.stdin = attach[1]
        self.out_pipe, self.err_pipe = Pipe(), Pipe()
        self.stdout, self.stderr = self.out_pipe, self.err_pipe
        self._wait_writer = wait[1]
        self._pump = asyncio.ensure_future(self._run_pump(attach[0]))
        self._exit = asyncio.ensure_future(self._run_wait(wait[0], wait[2]))
        self._removed = False

    async def _run_pump(self, reader: asyncio.StreamReader) -> None:
        demux = Demux()
        try:
            while data := await reader.read(65536):
                for stream, payload in demux.feed(data):
                    if stream == STDOUT:
                        await self.out_pipe.write(payload)
                    elif stream == STDERR:
                        await self.err_pipe.write(payload)
        except (ConnectionError, OSError) as e:
            log.debug("container %s: attach stream ended: %s", self.container, e)
        finally:
            self.out_pipe.end()
            self.err_pipe.end()

    async def _run_wait(self, reader: asyncio.StreamReader, head: Any) -> int:
        try:
            body = await read_body(reader, head)
        finally:
            await close_quietly(self._wait_writer)
        try:
            result = orjson.loads(body)
            code = int(result["StatusCode"])
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError) as e:
            raise EngineError(head.status, f"cannot read the exit status {body[:200]!r}", self.what) from e
        error = (result.get("Error") or {}).get("Message")
        if error:
            log.warning("%s: the engine reports: %s", self.what, error)
        return code

    def close_stdin(self) -> None:
        if not self.stdin.is_closing() and self.stdin.can_write_eof():
            self.stdin.write_eof()

    async def wait(self) -> int:
        code = await asyncio.shield(self._exit)
        await self.oom.settle(code)
        return code

    def limit_reason(self, code: int, stderr: str) -> str | None:
        return self.oom.reason(code)

    async def kill(self) -> None:
        if not self._removed:
            self._removed = True
            if not self._exit.done():
                with contextlib.suppress(EngineError, EngineUnavailable):
                    await self.engine.request("DELETE", f"/containers/{self.container}", {"force": 1})
                with contextlib.suppress(BaseException):
                    await asyncio.wait_for(asyncio.shield(self._exit), 5.0)
        for t in (self._pump, self._exit):
            t.cancel()
            with contextlib.suppress(BaseException):
                await t
        await close_quietly(self.stdin)
        await close_quietly(self._wait_writer)
        await self.oom.close()


# ---------------------------------------------------------------------------- the operator


class Container(StdioOperator):
    """``container``: an image run through the Docker engine with the process protocol."""

    config: ContainerConfig

    def __init__(self, config: ContainerConfig) -> None:
        super().__init__(config)
        self.engine: Engine | None = None
        self.memory_mb: int | None = None  # the task's resources (``limit``)
        self.cpu: float | None = None

    def limit(self, memory_mb: int | None, cpu: float | None) -> None:
        """The task's resources: the container's limits where its config sets none (None or
        0: no limit)."""
        self.memory_mb, self.cpu = memory_mb or None, cpu or None

    async def prepare(self, ctx: TaskContext) -> None:
        self.engine = Engine()
        await self.engine.ping()
        await self._ensure_image(self.engine, ctx.device)

    async def _ensure_image(self, engine: Engine, device: str) -> None:
        cfg = self.config
        if cfg.pull != "always":
            try:
                await engine.request("GET", f"/images/{cfg.image}/json")
                return
            except EngineError as e:
                if e.status != 404:
                    raise
                if cfg.pull == "never":
                    raise EngineError(
                        404, f"image {cfg.image} is not on device {device} (pull: never)"
                    ) from e
        ref = image_reference(cfg.image)
        self.log.info("pulling %s", ref)
        async with asyncio.timeout(PULL_TIMEOUT):
            head, reader, writer = await engine.open_stream(
                "POST", "/images/create", {"fromImage": ref}, what=f"pull {ref}"
            )
            try:
                body = await read_body(reader, head)
            finally:
                await close_quietly(writer)
        for line in body.splitlines():
            with contextlib.suppress(orjson.JSONDecodeError):
                msg = orjson.loads(line)
                if isinstance(msg, dict) and msg.get("error"):
                    raise EngineError(500, str(msg["error"]), f"pull {ref} on device {device}")

    async def spawn(self, run: Run) -> Child:
        engine, ctx, cfg = self.engine, self.ctx, self.config
        assert engine is not None, "spawn() before open()"
        body = create_request(
            cfg,
            dataflow=ctx.dataflow,
            task=ctx.task,
            device=ctx.device,
            run=run,
            memory_mb=self.memory_mb,
            cpu=self.cpu,
        )
        name = f"echo-{ctx.dataflow}-{ctx.task}-{uuid.uuid4().hex[:8]}"
        what = f"container {name} ({cfg.image})"
        created = await engine.request(
            "POST", "/containers/create", {"name": name}, body, what=f"create {what}"
        )
        cid = str(created.json()["Id"])
        attach: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None = None
        waiting: tuple[Any, asyncio.StreamReader, asyncio.StreamWriter] | None = None
        events: Stream | None = None
        try:
            attach = await engine.attach(cid)
            waiting = await engine.open_stream(
                "POST", f"/containers/{cid}/wait", {"condition": "removed"}, what=f"wait for {what}"
            )
            events = await OomWatch.subscribe(engine, cid, what, self.log)
            await engine.request("POST", f"/containers/{cid}/start", what=f"start {what}")
        except BaseException:
            with contextlib.suppress(Exception):
                await engine.request("DELETE", f"/containers/{cid}", {"force": 1})
            await close_quietly(attach[1] if attach else None)
            await close_quietly(waiting[2] if waiting else None)
            await close_quietly(events[2] if events else None)
            raise
        head, wait_reader, wait_writer = waiting
        memory = memory_limit(cfg, self.memory_mb)
        return ContainerChild(
            engine, cid, what, attach, (wait_reader, wait_writer, head), events=events, memory=memory
        )


class BatchContainer(Container):
    """``container`` in batch mode: the runner hands it micro-batches."""

    wants_batches = True


Container.batched = BatchContainer

OPERATORS: dict[str, type[Operator]] = {"container": Container}
