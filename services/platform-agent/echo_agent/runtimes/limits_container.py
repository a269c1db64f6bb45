"""A ``container`` task's resources: the container's limits, and the engine's OOM kill named
as the reason the task failed.

- ``memory_limit``: the config's ``memory_mb``, else the task's ``resources.memory_mb`` (at
  least ``MIN_MEMORY_MB``, the engine's smallest; 0: none) becomes ``HostConfig.Memory``;
  ``cpus``, else ``resources.cpu``, becomes ``NanoCpus`` (``container_runtime.create_request``;
  the engine throttles the container to it).
- ``OomWatch``: the engine's ``oom`` and ``die`` events of one container (``GET /events``,
  subscribed before it starts). Containers are auto-removed, so ``State.OOMKilled`` cannot be
  inspected once one ended; the ``oom`` event is what sets it. A container the engine
  OOM-killed fails its task with ``memory limit exceeded: 64 MiB (resources.memory_mb)`` (or
  ``(memory_mb of its config)``); without the events (an engine that refuses them), an exit
  137 under a memory limit says ``exited with code 137 (killed: memory limit 64 MiB may have
  been exceeded)``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass

import orjson

from echo_shared.catalogue.runtimes import ContainerConfig

from .docker_api import Engine, EngineError, EngineUnavailable, Response, body_lines, close_quietly

log = logging.getLogger(__name__)

MIN_MEMORY_MB = 6  # the engine's smallest memory limit
EVENTS_SETTLE = 1.0  # seconds an exit waits for the engine's "die" event (an "oom" comes first)
KILLED = 137  # 128 + SIGKILL


@dataclass(frozen=True)
class MemoryLimit:
    """A container's memory limit and where it comes from, for messages."""

    mb: int
    source: str  # "resources.memory_mb" or "memory_mb of its config"


def memory_limit(cfg: ContainerConfig, resources_mb: int | None) -> MemoryLimit | None:
    """The config's ``memory_mb``, else the task's ``resources.memory_mb`` (0: none)."""
    if cfg.memory_mb is not None:
        return MemoryLimit(cfg.memory_mb, "memory_mb of its config")
    if resources_mb:
        return MemoryLimit(max(resources_mb, MIN_MEMORY_MB), "resources.memory_mb")
    return None


Stream = tuple[Response, asyncio.StreamReader, asyncio.StreamWriter]


class OomWatch:
    """Whether the engine OOM-killed one container (see the module doc)."""

    def __init__(self, what: str, memory: MemoryLimit | None, stream: Stream | None) -> None:
        self.what, self.memory = what, memory
        self.oom_killed = False
        self._died = asyncio.Event()  # its "die" event arrived, or the stream ended
        self._writer = stream[2] if stream is not None else None
        self._task = asyncio.ensure_future(self._run(stream[0], stream[1])) if stream is not None else None

    @staticmethod
    async def subscribe(engine: Engine, container: str, what: str, task_log: logging.Logger) -> Stream | None:
        """The engine's events of ``container`` (None, said in the log: it will not give them)."""
        filters = {"type": ["container"], "container": [container], "event": ["oom", "die"]}
        try:
            return await engine.open_stream(
                "GET", "/events", {"filters": orjson.dumps(filters).decode()}, what=f"events of {what}"
            )
        except (EngineError, EngineUnavailable) as e:
            task_log.warning("%s: no OOM kills will be told from other exits: %s", what, e)
            return None

    async def _run(self, head: Response, reader: asyncio.StreamReader) -> None:
        try:
            async for line in body_lines(reader, head):
                with contextlib.suppress(orjson.JSONDecodeError):
                    event = orjson.loads(line)
                    action = (event.get("Action") or event.get("status")) if isinstance(event, dict) else None
                    if action == "oom":
                        self.oom_killed = True
                        log.warning("%s: the engine OOM-killed it", self.what)
                    elif action == "die":
                        return
        except (ConnectionError, OSError, EngineError, asyncio.IncompleteReadError, ValueError) as e:
            log.debug("%s: events stream ended: %s", self.what, e)
        finally:
            self._died.set()
            await close_quietly(self._writer)

    async def settle(self, code: int) -> None:
        """After a failed exit: until the engine said the container died (an ``oom`` comes
        before), at most ``EVENTS_SETTLE`` seconds."""
        if code != 0 and self._task is not None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._died.wait(), EVENTS_SETTLE)

    def reason(self, code: int) -> str | None:
        if self.oom_killed:
            if self.memory is None:
                return "out of memory: the engine OOM-killed it (no memory limit set)"
            return f"memory limit exceeded: {self.memory.mb} MiB ({self.memory.source})"
        if code == KILLED and self.memory is not None and self._task is None:
            return (
                f"exited with code {KILLED} (killed: memory limit {self.memory.mb} MiB may have been "
                "exceeded)"
            )
        return None

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(BaseException):
                await self._task
        await close_quietly(self._writer)


__all__ = ["MIN_MEMORY_MB", "MemoryLimit", "OomWatch", "memory_limit"]
