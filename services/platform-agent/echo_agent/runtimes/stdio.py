"""The process protocol: records as JSON lines over a program's stdin and stdout.

Shared by the ``process`` runtime (a local command) and the ``container`` runtime (an
image run by the Docker engine). Both supply a ``Child`` (stdin writer, stdout and stderr
readers, exit code, kill); ``StdioOperator`` (``stdio_operator``) drives it in one of three
modes (``echo_shared.catalogue.runtimes.Mode``), ``LinesSession`` (``lines``) the first.
This module holds the pieces they share (errors, runs, output parsing, stderr tails).

``lines`` — one long-running program for the whole task. ``process(record)`` writes the
record as one JSON line to its stdin and returns the output records that have arrived on
its stdout *so far*; a reader task parses stdout concurrently, so an input may produce
0..n outputs, early or late, without the two pipes ever blocking each other:

- the writer never waits for outputs, and the reader never waits for the writer, so a
  program that prints much per input, or reads everything before printing, cannot
  deadlock with us;
- back-pressure: when the program does not read its stdin fast enough (the pipe and our
  buffer above ``STDIN_HIGH_WATER``) ``process`` waits for it to drain — while handing on
  outputs whenever ``READY_LIMIT`` of them piled up; the reader pauses at
  ``2 * READY_LIMIT`` undelivered outputs, so memory stays bounded either way;
- outputs that arrive between two inputs travel with the next ``process`` call's return
  (or wait up to ``linger`` seconds for the first one); ``close()`` closes stdin, waits
  for the program to exit (``timeout``, default 10 s, then it is killed) and returns the
  rest. Records still inside the program when a device dies are lost (its inputs were
  acknowledged): lines mode is at-most-once for them; batch and file modes are not;
- the program exiting before its input ended, or printing a line that is not a JSON
  object, fails the task at the next call with the exit code or the offending line.

``batch`` — one run per micro-batch (``wants_batches``): the batch's records as JSON
lines on stdin, then EOF; the run's stdout JSON lines are the batch's outputs.

``file`` — one run per input file record: ``{input}`` in the argv is the file's path;
with ``output`` set, ``{output}`` is a fresh path the run must write, and that file goes
downstream as a file record; otherwise the run's stdout JSON lines, each merged over the
input record (without ``path`` and ``size``), are the outputs. Relative ``output``
patterns resolve under ``<task data dir>/output/<generation>-<run>/`` (a directory per
run, so a repeated name never overwrites a file not sent yet); the file stays there: the
file edge sends it from there and needs it until the consumer confirmed it.

Errors surface in the task's state: a run (or the lines program) exiting non-zero raises
``RunFailed`` with the exit code (or the signal that killed it, or the resource limit it
hit: ``Child.limit_reason``) and the tail of its stderr; a run over ``timeout`` is
killed and raises ``RunFailed`` too. A cancelled task kills its program (and, for local
commands, its whole process group): nothing outlives the task.
"""

from __future__ import annotations

import abc
import asyncio
import contextlib
import logging
import signal
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import orjson

from echo_shared.catalogue.runtimes import INPUT, OUTPUT

from ..operators.base import Record

LINE_LIMIT = 16 * 1024 * 1024  # longest stdout line (one output record)
STDIN_HIGH_WATER = 256 * 1024  # bytes buffered towards stdin before process() waits
READY_LIMIT = 10_000  # outputs handed on while waiting for stdin to drain
STDERR_TAIL = 4096  # bytes of stderr kept for error messages
LINES_EXIT_TIMEOUT = 10.0
STDERR_SETTLE = 1.0  # seconds to let stderr reach EOF after an exit, for the message
OUTPUT_DIR = "output"  # under the task's data directory: where relative output patterns go


def signal_name(number: int) -> str:
    """``SIGKILL`` for 9 (``signal 64`` for one without a name)."""
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"


def exit_text(code: int) -> str:
    """``exited with code 3``; a negative code (killed by a signal) names the signal."""
    return f"exited with signal {signal_name(-code)}" if code < 0 else f"exited with code {code}"


class RunFailed(RuntimeError):
    """A run (or the lines program) failed: its exit code and the tail of its stderr."""

    def __init__(self, what: str, problem: str, *, code: int | None = None, stderr: str = "") -> None:
        self.what, self.code, self.stderr = what, code, stderr
        msg = f"{what} {problem}"
        msg += f"; stderr: {stderr}" if stderr else "; no stderr output"
        super().__init__(msg)


class BadOutput(ValueError):
    """A stdout line that is not a JSON object."""


class ByteStream(Protocol):
    """What is read from a program's stdout or stderr (``asyncio.StreamReader`` is one)."""

    async def readline(self) -> bytes: ...

    async def read(self, n: int = -1) -> bytes: ...


class Child(abc.ABC):
    """A running program: what the protocol needs from a process or a container."""

    what: str  # how messages name it, e.g. "command ['python3', 'x.py']"
    stdin: asyncio.StreamWriter
    stdout: ByteStream
    stderr: ByteStream

    @abc.abstractmethod
    def close_stdin(self) -> None:
        """EOF on the program's stdin."""

    @abc.abstractmethod
    async def wait(self) -> int:
        """The exit code, once the program ended."""

    @abc.abstractmethod
    async def kill(self) -> None:
        """End the program now, if it runs (idempotent), and release what it held."""

    def limit_reason(self, code: int, stderr: str) -> str | None:
        """The resource limit its exit shows it hit (None: none that can be told)."""
        return None

    def failure(self, code: int, stderr: str, what: str = "") -> str:
        """How an exit with ``code`` is described: the limit hit, else the code or signal."""
        return self.limit_reason(code, stderr) or f"{exit_text(code)}{what}"


@dataclass(frozen=True)
class Run:
    """What one run is about: in file mode, the input file and the output path (host paths)."""

    input: Path | None = None
    output: Path | None = None


def substitute(
    argv: list[str], run: Run, *, input_as: str | None = None, output_as: str | None = None
) -> list[str]:
    """``{input}`` and ``{output}`` replaced (exact tokens only: other braces stay as written)."""
    inp = input_as if input_as is not None else (str(run.input) if run.input else None)
    out = output_as if output_as is not None else (str(run.output) if run.output else None)
    result = []
    for arg in argv:
        if inp is not None:
            arg = arg.replace(INPUT, inp)
        if out is not None:
            arg = arg.replace(OUTPUT, out)
        result.append(arg)
    return result


def output_path(pattern: str, input_name: str, n: int, base: Path) -> Path:
    """The ``output`` pattern for one input file (relative patterns under ``base``)."""
    p = Path(input_name)
    name = (
        pattern.replace("{name}", p.name)
        .replace("{stem}", p.stem)
        .replace("{suffix}", p.suffix)
        .replace("{n}", str(n))
    )
    path = Path(name).expanduser()
    return path if path.is_absolute() else base / path


def parse_line(line: bytes, number: int, what: str) -> Record | None:
    """One stdout line -> a record (None for a blank line); ``BadOutput`` otherwise."""
    text = line.strip()
    if not text:
        return None
    try:
        value = orjson.loads(text)
    except orjson.JSONDecodeError as e:
        raise BadOutput(f"{what}: output line {number} is not JSON ({e}): {text[:200]!r}") from e
    if not isinstance(value, dict):
        raise BadOutput(f"{what}: output line {number} is not a JSON object: {text[:200]!r}")
    return value


def parse_output(data: bytes, what: str) -> list[Record]:
    out: list[Record] = []
    for i, line in enumerate(data.split(b"\n"), 1):
        record = parse_line(line, i, what)
        if record is not None:
            out.append(record)
    return out


def encode_lines(records: list[Record]) -> bytes:
    return b"".join(orjson.dumps(r) + b"\n" for r in records)


class StderrTail:
    """Reads a stderr stream to EOF, keeping its last bytes (and logging it at debug)."""

    def __init__(self, reader: ByteStream, log: logging.Logger, limit: int = STDERR_TAIL) -> None:
        self.reader, self.log, self.limit = reader, log, limit
        self.data = b""
        self.task = asyncio.ensure_future(self._run())

    async def _run(self) -> None:
        while chunk := await self.reader.read(65536):
            self.data = (self.data + chunk)[-self.limit :]
            if self.log.isEnabledFor(logging.DEBUG):
                self.log.debug("stderr: %s", chunk.decode(errors="replace").rstrip())

    async def settle(self) -> str:
        """The tail, once stderr ended (or after a short wait if something still holds it)."""
        with contextlib.suppress(Exception):
            await asyncio.wait_for(asyncio.shield(self.task), STDERR_SETTLE)
        return self.text()

    def text(self) -> str:
        text = self.data.decode(errors="replace").strip()
        return text[-1000:]

    def cancel(self) -> None:
        self.task.cancel()


async def run_once(child: Child, data: bytes | None, timeout: float | None, log: logging.Logger) -> bytes:
    """Feed ``data`` (then EOF) to a fresh run and return its stdout once it exited 0."""
    tail = StderrTail(child.stderr, log)

    async def feed() -> None:
        try:
            if data:
                child.stdin.write(data)
                await child.stdin.drain()
        except (BrokenPipeError, ConnectionResetError):
            pass  # it stopped reading: its exit code tells why
        finally:
            with contextlib.suppress(Exception):
                child.close_stdin()

    feeder = asyncio.ensure_future(feed())
    reader = asyncio.ensure_future(child.stdout.read())
    try:
        async with asyncio.timeout(timeout):
            await feeder
            out = await reader
            code = await child.wait()
    except TimeoutError:
        await child.kill()
        raise RunFailed(
            child.what, f"timed out after {timeout:g}s (killed)", stderr=await tail.settle()
        ) from None
    finally:
        for t in (feeder, reader):
            t.cancel()
        await child.kill()
    stderr = await tail.settle()
    tail.cancel()
    if code != 0:
        raise RunFailed(child.what, child.failure(code, stderr), code=code, stderr=stderr)
    return out
