"""The ``lines`` mode of the process protocol: one long-running program fed record by record.

See ``echo_agent.runtimes.stdio`` for the mode's contract (outputs handed on as they arrive,
back-pressure both ways, at-most-once for records inside the program when a device dies).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

import orjson

from ..operators.base import Record
from .stdio import (
    LINE_LIMIT,
    READY_LIMIT,
    STDERR_SETTLE,
    STDIN_HIGH_WATER,
    BadOutput,
    Child,
    RunFailed,
    StderrTail,
    parse_line,
)


class LinesSession:
    """One long-running program fed record by record (the ``lines`` mode; see the module doc)."""

    def __init__(self, child: Child, log: logging.Logger, linger: float) -> None:
        self.child, self.log, self.linger = child, log, linger
        self.ready: list[Record] = []
        self.failure: BaseException | None = None
        self.eof = False
        self.closing = False
        self.aborted = False
        self.wake = asyncio.Event()  # outputs piled up, a failure, or stdout ended
        self.arrived = asyncio.Event()  # at least one output is ready
        self.room = asyncio.Event()  # the reader may go on
        self.room.set()
        self.tail = StderrTail(child.stderr, log)
        self.reader = asyncio.ensure_future(self._read())
        self.exited = asyncio.ensure_future(child.wait())
        self.drain: asyncio.Future[None] | None = None

    async def _read(self) -> None:
        n = 0
        stdout = self.child.stdout
        try:
            while True:
                try:
                    line = await stdout.readline()
                except ValueError as e:  # a line over the reader's limit
                    raise BadOutput(
                        f"{self.child.what}: output line {n + 1} is longer than {LINE_LIMIT} bytes"
                    ) from e
                if not line:
                    break
                n += 1
                if self.failure is not None:
                    continue  # keep the pipe flowing; the task fails at the next call
                record = parse_line(line, n, self.child.what)
                if record is None:
                    continue
                self.ready.append(record)
                self.arrived.set()
                if len(self.ready) >= READY_LIMIT:
                    self.wake.set()
                    if len(self.ready) >= 2 * READY_LIMIT and not self.closing:
                        self.room.clear()
                        await self.room.wait()
        except BadOutput as e:
            self.failure = e
        finally:
            self.eof = True
            self.wake.set()

    def _take(self) -> list[Record]:
        out, self.ready = self.ready, []
        self.arrived.clear()
        self.wake.clear()
        self.room.set()
        return out

    async def _check(self) -> None:
        if self.failure is not None:
            raise self.failure
        if self.exited.done():
            code = self.exited.result()
            stderr = await self.tail.settle()
            raise RunFailed(
                self.child.what,
                self.child.failure(code, stderr, " while records were still arriving"),
                code=code,
                stderr=stderr,
            )

    async def send(self, record: Record) -> list[Record]:
        try:
            await self._check()
            self.child.stdin.write(orjson.dumps(record) + b"\n")
            transport = self.child.stdin.transport
            if transport.get_write_buffer_size() > STDIN_HIGH_WATER:
                await self._backpressure()
            elif self.linger and not self.ready:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.arrived.wait(), self.linger)
            await self._check()
            return self._take()
        except asyncio.CancelledError:
            self.aborted = True
            raise

    async def _backpressure(self) -> None:
        """Wait for stdin to drain, unless outputs piled up meanwhile or the program ended."""
        if self.drain is None or self.drain.done():
            self.drain = asyncio.ensure_future(self.child.stdin.drain())
        woken = asyncio.ensure_future(self.wake.wait())
        try:
            waiters: set[asyncio.Future[Any]] = {self.drain, self.exited, woken}
            await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
        finally:
            woken.cancel()
        if self.drain.done() and not self.drain.cancelled() and self.drain.exception() is not None:
            await asyncio.wait({self.exited}, timeout=STDERR_SETTLE)  # a broken pipe: it exited

    async def close(self, timeout: float) -> list[Record]:
        """EOF to the program, wait for it to exit, and return the outputs not handed on yet."""
        try:
            if self.aborted:
                return []
            if self.failure is not None:  # the task fails anyway: no waiting for the program
                raise self.failure
            self.closing = True
            self.room.set()
            with contextlib.suppress(Exception):
                self.child.close_stdin()
            try:
                async with asyncio.timeout(timeout):
                    await asyncio.wait({self.reader})
                    code = await self.exited
            except TimeoutError:
                await self.child.kill()
                raise RunFailed(
                    self.child.what,
                    f"did not exit within {timeout:g}s after its input ended (killed)",
                    stderr=await self.tail.settle(),
                ) from None
            if code != 0:
                stderr = await self.tail.settle()
                raise RunFailed(self.child.what, self.child.failure(code, stderr), code=code, stderr=stderr)
            if self.failure is not None:
                raise self.failure
            return self._take()
        finally:
            await self._cleanup()

    async def _cleanup(self) -> None:
        for t in (self.reader, self.drain):
            if t is not None:
                t.cancel()
        await self.child.kill()
        self.exited.cancel()
        self.tail.cancel()
        tasks: list[asyncio.Future[Any] | None] = [self.reader, self.drain, self.exited, self.tail.task]
        for t in tasks:
            if t is not None:
                with contextlib.suppress(BaseException):
                    await t
