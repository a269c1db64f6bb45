"""The operator of the process protocol: ``StdioOperator`` drives a ``Child`` in its mode.

``process`` (``process_runtime``) and ``container`` (``container_runtime``) subclass it and
say how a program starts (``spawn``), what to check on the device first (``prepare``) and,
for a file-mode run, how the program gets at its input and output (``lend``/``take_back``).
The modes and their guarantees are documented in ``echo_agent.runtimes.stdio``. A file-mode
run's ``{output}`` must be a regular file (not a link: the agent reads and sends it).
"""

from __future__ import annotations

import abc
import asyncio
import logging
import os
import stat
from pathlib import Path
from typing import Any, ClassVar

from echo_shared.catalogue.runtimes import OUTPUT, Mode, StdioConfig

from ..operators.base import Operator, Record, TaskContext
from .lines import LinesSession
from .stdio import (
    LINES_EXIT_TIMEOUT,
    OUTPUT_DIR,
    Child,
    Run,
    RunFailed,
    encode_lines,
    output_path,
    parse_output,
    run_once,
)


class StdioOperator(Operator):
    """Drives a ``Child`` in the configured mode; subclasses say how to start one."""

    config: StdioConfig
    batched: ClassVar[type[StdioOperator] | None] = None  # the subclass for mode: batch

    def __new__(cls, config: Any) -> Any:
        if getattr(config, "mode", None) is Mode.batch and cls.batched is not None and not cls.wants_batches:
            cls = cls.batched
        return super().__new__(cls)

    def __init__(self, config: StdioConfig) -> None:
        super().__init__(config)
        self.batch_count = config.batch_count
        self.batch_seconds = config.batch_seconds
        self.log = logging.getLogger("echo.task")
        self.runs = 0
        self.lines: LinesSession | None = None

    # ------------------------------------------------------------------ to implement

    @abc.abstractmethod
    async def spawn(self, run: Run) -> Child:
        """Start the program for one run (or, in lines mode, for the whole task)."""

    async def prepare(self, ctx: TaskContext) -> None:
        """Check what the config names on this device; raise naming what is missing."""

    async def lend(self, run: Run) -> None:
        """Before a file-mode run: let the program read its input and write its output."""

    async def take_back(self, run: Run) -> None:
        """After a file-mode run (the program ended): take back what ``lend`` lent."""

    # ------------------------------------------------------------------ operator API

    async def open(self, ctx: TaskContext) -> None:
        await super().open(ctx)
        self.log = ctx.log
        await asyncio.to_thread(ctx.data_dir.mkdir, parents=True, exist_ok=True)
        await self.prepare(ctx)
        if self.config.mode is Mode.lines:
            self.lines = LinesSession(await self.spawn(Run()), self.log, self.config.linger)

    async def process(self, record: Record) -> list[Record]:
        mode = self.config.mode
        if mode is Mode.lines:
            assert self.lines is not None, "process() before open()"
            return await self.lines.send(record)
        if mode is Mode.file:
            return await self._run_file(record)
        return await self.process_batch([record])

    async def process_batch(self, records: list[Record]) -> list[Record]:
        if self.config.mode is not Mode.batch:
            out: list[Record] = []
            for r in records:
                out.extend(await self.process(r))
            return out
        if not records:
            return []
        self.runs += 1
        child = await self.spawn(Run())
        data = await run_once(child, encode_lines(records), self.config.timeout, self.log)
        return parse_output(data, child.what)

    async def close(self) -> list[Record] | None:
        lines, self.lines = self.lines, None
        if lines is None:
            return None
        return await lines.close(self.config.timeout or LINES_EXIT_TIMEOUT)

    # ------------------------------------------------------------------ file mode

    async def _run_file(self, record: Record) -> list[Record]:
        path = record.get("path")
        if not isinstance(path, str):
            raise ValueError(f"file mode needs file records with a 'path', got {record!r:.200}")
        name = str(record.get("name") or Path(path).name)
        self.runs += 1
        out_path = None
        if self.config.output is not None:
            # a directory per run: a name that repeats never overwrites a file not sent yet
            base = self.ctx.data_dir / OUTPUT_DIR / f"{self.ctx.generation}-{self.runs}"
            out_path = output_path(self.config.output, name, self.runs, base)
            await asyncio.to_thread(_fresh, out_path)
        run = Run(Path(path), out_path)
        await self.lend(run)
        try:
            child = await self.spawn(run)
            data = await run_once(child, None, self.config.timeout, self.log)
        finally:
            await self.take_back(run)
        meta = {k: v for k, v in record.items() if k not in ("path", "size")}
        if out_path is None:
            return [{**meta, **r} for r in parse_output(data, child.what)]
        try:
            st = await asyncio.to_thread(os.lstat, out_path)
        except FileNotFoundError:
            raise RunFailed(
                child.what, f"exited with code 0 but did not write its {OUTPUT} file {out_path}"
            ) from None
        # the agent reads and sends this file: a link the program made (to a file of the
        # agent's) must not pass for its output
        if not stat.S_ISREG(st.st_mode) or st.st_nlink != 1:
            raise RunFailed(child.what, f"made its {OUTPUT} {out_path} something else than a regular file")
        return [{**meta, "path": str(out_path), "name": out_path.name, "size": st.st_size, "source": name}]


def _fresh(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.unlink(missing_ok=True)
