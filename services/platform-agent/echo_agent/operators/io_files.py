"""File and directory operators: ``io.file_source``, ``io.dir_source``, ``io.dir_sink``,
``core.split_lines`` (catalogue: ``echo_shared.catalogue.io``).

Disk work runs in threads (``asyncio.to_thread``), never on the event loop. A path
missing on the device fails the task in ``open()`` with the path and the device.
"""

from __future__ import annotations

import asyncio
import contextlib
import fnmatch
import os
import shutil
import stat
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import IO, Any

from echo_shared.catalogue.io import DirSinkConfig, DirSourceConfig, FileSourceConfig, SplitLinesConfig

from .base import Operator, Record, SourceOperator, TaskContext

READ_LINES = 1024  # lines read per trip to the thread pool
READ_BYTES = 1 << 20


class MissingPath(FileNotFoundError):
    """A path an operator's config names does not exist on the device."""


class LineTooLong(ValueError):
    """A line longer than ``max_line_bytes``; ``index`` counts the lines read before it."""

    def __init__(self, message: str, index: int = 0) -> None:
        super().__init__(message)
        self.index = index


def device_path(raw: str) -> Path:
    return Path(raw).expanduser()


def _require(path: Path, *, what: str, op: str, device: str, is_dir: bool) -> None:
    if not path.exists():
        raise MissingPath(f"{op}: no {what} {path} on device {device}")
    if is_dir and not path.is_dir():
        raise NotADirectoryError(f"{op}: {path} on device {device} is not a directory")
    if not is_dir and not path.is_file():
        raise IsADirectoryError(f"{op}: {path} on device {device} is not a regular file")


def _text(raw: bytes, encoding: str) -> str:
    if raw.endswith(b"\n"):
        raw = raw[:-2] if raw.endswith(b"\r\n") else raw[:-1]
    return raw.decode(encoding, errors="replace")


def read_lines(f: IO[bytes], limit: int, max_bytes: int) -> list[bytes]:
    """Up to ``limit`` lines (with their newline) or about ``READ_BYTES`` bytes; [] at the end."""
    out: list[bytes] = []
    size = 0
    while len(out) < limit and size < READ_BYTES:
        line = f.readline(max_bytes + 1)
        if not line:
            break
        if len(line) > max_bytes and not (len(line) == max_bytes + 1 and line.endswith(b"\n")):
            raise LineTooLong(f"longer than max_line_bytes ({max_bytes})", len(out))
        out.append(line)
        size += len(line)
    return out


class Pacer:
    """Spaces items at ``rate`` per second (0 = no pacing), yielding to the loop now and then."""

    def __init__(self, rate: float) -> None:
        self.rate = rate
        self.count = 0
        self.start = 0.0

    async def tick(self) -> None:
        loop = asyncio.get_running_loop()
        if self.count == 0:
            self.start = loop.time()
        self.count += 1
        if self.rate > 0:
            delay = self.start + self.count / self.rate - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
        elif self.count % 256 == 0:
            await asyncio.sleep(0)


class FileSource(SourceOperator):
    """``io.file_source``: each line of a file as ``{"seq": i, "line": text}``, then finishes.

    ``seq`` counts emitted lines from 0 (skipped header lines are not counted). The state
    is the byte offset of the next line, so a restored copy resumes where it stopped.
    """

    stateful = True
    config: FileSourceConfig

    def __init__(self, config: FileSourceConfig) -> None:
        super().__init__(config)
        self.seq = 0  # next seq to emit
        self.line = 0  # lines consumed (skipped ones included)
        self.offset = 0  # byte offset of the next line
        self._f: IO[bytes] | None = None

    async def open(self, ctx: TaskContext) -> None:
        await super().open(ctx)
        path = device_path(self.config.path)
        self.path = path

        def open_file() -> IO[bytes]:
            _require(path, what="file", op="io.file_source", device=ctx.device, is_dir=False)
            f = open(path, "rb")  # noqa: SIM115 - closed by close()
            f.seek(self.offset)
            return f

        self._f = await asyncio.to_thread(open_file)

    async def generate(self) -> AsyncIterator[Record]:
        assert self._f is not None, "open() first"
        cfg, f = self.config, self._f
        pacer = Pacer(cfg.rate)
        while True:
            try:
                lines = await asyncio.to_thread(read_lines, f, READ_LINES, cfg.max_line_bytes)
            except LineTooLong as e:
                where = f"line {self.line + e.index + 1} of {self.path}"
                raise LineTooLong(f"io.file_source: {where} is {e}") from None
            if not lines:
                return
            for raw in lines:
                self.line += 1
                self.offset += len(raw)
                if self.line <= cfg.skip:
                    continue
                seq = self.seq
                self.seq += 1
                yield {"seq": seq, "line": _text(raw, cfg.encoding)}
                await pacer.tick()

    async def close(self) -> None:
        f, self._f = self._f, None
        if f is not None:
            f.close()

    def snapshot(self) -> Any:
        return {"seq": self.seq, "line": self.line, "offset": self.offset}

    def restore(self, state: Any) -> None:
        self.seq, self.line, self.offset = int(state["seq"]), int(state["line"]), int(state["offset"])
        if self._f is not None:
            self._f.seek(self.offset)


class DirSource(SourceOperator):
    """``io.dir_source``: one file record per matching file, in sorted order.

    Without ``poll`` it scans once and finishes; with ``poll`` it rescans every ``poll``
    seconds and emits each new file once it has settled. Source files are never deleted.
    The state is the set of relative paths already emitted (it grows with the directory).
    """

    stateful = True
    config: DirSourceConfig

    def __init__(self, config: DirSourceConfig) -> None:
        super().__init__(config)
        self.emitted: set[str] = set()
        self._seen: dict[str, tuple[int, int]] = {}  # relpath -> (size, mtime_ns) at the last scan

    async def open(self, ctx: TaskContext) -> None:
        await super().open(ctx)
        self.root = device_path(self.config.path)
        await asyncio.to_thread(
            _require, self.root, what="directory", op="io.dir_source", device=ctx.device, is_dir=True
        )

    def scan(self) -> list[tuple[str, Path, int, int]]:
        """(relative path, path, size, mtime_ns) of every matching regular file, sorted."""
        cfg = self.config
        hidden_ok = cfg.pattern.startswith(".")
        found: list[tuple[str, Path, int, int]] = []
        for dirpath, dirnames, filenames in os.walk(self.root):
            if not cfg.recursive:
                dirnames.clear()
            else:
                dirnames[:] = [d for d in dirnames if hidden_ok or not d.startswith(".")]
            for name in filenames:
                if (name.startswith(".") and not hidden_ok) or not fnmatch.fnmatchcase(name, cfg.pattern):
                    continue
                path = Path(dirpath, name)
                try:
                    st = path.stat()
                except OSError:  # vanished meanwhile
                    continue
                if not stat.S_ISREG(st.st_mode):
                    continue
                found.append(
                    (path.relative_to(self.root).as_posix(), path.absolute(), st.st_size, st.st_mtime_ns)
                )
        found.sort()
        return found

    def _ready(self, rel: str, size: int, mtime_ns: int) -> bool:
        if self.config.poll is None:
            return True
        settled = self._seen.get(rel) == (size, mtime_ns)
        old = time.time() - mtime_ns / 1e9 >= self.config.settle
        return settled or old

    async def generate(self) -> AsyncIterator[Record]:
        pacer = Pacer(self.config.rate)
        while True:
            files = await asyncio.to_thread(self.scan)
            for rel, path, size, mtime_ns in files:
                if rel in self.emitted:
                    continue
                if not self._ready(rel, size, mtime_ns):
                    self._seen[rel] = (size, mtime_ns)
                    continue
                self.emitted.add(rel)
                self._seen.pop(rel, None)
                yield {"path": str(path), "name": path.name, "size": size, "relpath": rel}
                await pacer.tick()
            if self.config.poll is None:
                return
            current = {f[0] for f in files}
            self._seen = {k: v for k, v in self._seen.items() if k in current}
            await asyncio.sleep(self.config.poll)

    def snapshot(self) -> Any:
        return {"emitted": sorted(self.emitted)}

    def restore(self, state: Any) -> None:
        self.emitted = {str(x) for x in state["emitted"]}


def safe_name(raw: object) -> str:
    """A file name from a record, reduced to its last component; never '', '.' or '..'."""
    name = Path(str(raw or "").replace("\\", "/")).name
    if name in ("", ".", ".."):
        raise ValueError(f"io.dir_sink: the record names no usable file name ({raw!r})")
    return name


def numbered(name: str, n: int) -> str:
    """``data.tar.gz``, 2 -> ``data-2.tar.gz`` (a leading dot is part of the stem)."""
    lead = "." if name.startswith(".") else ""
    stem, dot, suffix = name[len(lead) :].partition(".")
    return f"{lead}{stem}-{n}{dot}{suffix}"


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _place(tmp: Path, target: Path) -> bool:
    """Link ``tmp`` to ``target`` unless it exists (atomic); False if it exists."""
    try:
        os.link(tmp, target)
    except FileExistsError:
        return False
    except OSError:  # no hard links here (some file systems): check, then rename
        if target.exists():
            return False
        os.replace(tmp, target)
        return True
    tmp.unlink()
    return True


class DirSink(Operator):
    """``io.dir_sink``: stores each received file in ``path`` under its name.

    The received file (a local copy the runner would delete) is moved when it is on the
    same file system, else copied; either way under a hidden temporary name first, then
    fsynced and renamed, so the directory never shows a partial file.
    """

    config: DirSinkConfig

    async def open(self, ctx: TaskContext) -> None:
        await super().open(ctx)
        self.root = device_path(self.config.path)

        def prepare() -> None:
            if self.config.create:
                self.root.mkdir(parents=True, exist_ok=True)
            _require(self.root, what="directory", op="io.dir_sink", device=ctx.device, is_dir=True)

        await asyncio.to_thread(prepare)
        self.stored = 0

    async def process(self, record: Record) -> None:
        await asyncio.to_thread(self.store, record)

    def store(self, record: Record) -> Path:
        src = Path(str(record.get("path") or ""))
        name = safe_name(record.get("name") or src.name)
        if not src.is_file():
            raise MissingPath(f"io.dir_sink: received file {src} is missing on device {self.ctx.device}")
        tmp = self.root / f".{name}.echo-part-{uuid.uuid4().hex[:8]}"
        try:
            try:
                os.rename(src, tmp)
            except OSError:  # another file system (or not ours to move): copy
                shutil.copyfile(src, tmp)
            _fsync(tmp)
            target = self._final(tmp, name)
        finally:
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()
        _fsync(self.root)
        self.stored += 1
        return target

    def _final(self, tmp: Path, name: str) -> Path:
        target = self.root / name
        mode = self.config.conflict
        if mode == "replace":
            os.replace(tmp, target)
            return target
        if _place(tmp, target):
            return target
        if mode == "fail":
            raise FileExistsError(
                f"io.dir_sink: {target} already exists on device {self.ctx.device} (conflict: fail)"
            )
        for n in range(1, 100_000):
            candidate = self.root / numbered(name, n)
            if _place(tmp, candidate):
                return candidate
        raise FileExistsError(f"io.dir_sink: no free name for {name} in {self.root}")


class SplitLines(Operator):
    """``core.split_lines``: each line of each received file as ``{"name", "n", "line"}``.

    ``n`` is the line's number in its file, from 1 (skipped header lines keep their numbers).
    """

    config: SplitLinesConfig

    async def process(self, record: Record) -> list[Record]:
        return await asyncio.to_thread(self.split, record)

    def split(self, record: Record) -> list[Record]:
        cfg = self.config
        path = Path(str(record.get("path") or ""))
        name = record.get("name") or path.name
        out: list[Record] = []
        n = 0
        with open(path, "rb") as f:
            while True:
                try:
                    lines = read_lines(f, READ_LINES, cfg.max_line_bytes)
                except LineTooLong as e:
                    raise LineTooLong(f"core.split_lines: line {n + e.index + 1} of {name} is {e}") from None
                if not lines:
                    return out
                for raw in lines:
                    n += 1
                    if n > cfg.skip:
                        out.append({"name": name, "n": n, "line": _text(raw, cfg.encoding)})


OPERATORS: dict[str, type[Operator]] = {
    "io.file_source": FileSource,
    "io.dir_source": DirSource,
    "io.dir_sink": DirSink,
    "core.split_lines": SplitLines,
}
