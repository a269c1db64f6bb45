"""Leader leases in Redis, with fencing: of a service's replicas, one runs its singleton loops.

A lease is one Redis key, ``<key>`` = ``"<token>:<owner>"`` with a TTL. ``acquire`` takes it
when it is free (or held under this replica's own name: the same replica restarted) and
draws a new fencing token (``INCR <key>:fence``), so every holder in a
lease's history has a larger token than the ones before; ``renew`` extends it only while it
still holds that exact value (a script compares and extends in one step). A replica that
paused past the TTL (a stop signal, a long GC, a partition) finds its value gone: its
renewal fails and it stops acting; meanwhile its writes are refused too, because every write
of the singleton loops goes through a script that checks the lease value first
(``FENCED``: the caller's script runs its writes only when ``GET <key>`` is still its value,
else returns ``FENCED`` and the caller raises ``Fenced``).

``Leadership.run`` keeps trying to acquire (every 0.5 s), runs ``body`` while it holds the
lease, renews every third of the TTL, and cancels ``body`` the moment a renewal fails or
cannot be made before the lease would expire. A standby takes over within the TTL plus
0.5 s of the leader's end (at once when the leader stepped down cleanly: it releases).
Leadership changes are logged once each.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import Callable, Coroutine
from typing import Any

import redis.asyncio as aioredis
from redis.asyncio.client import Pipeline
from redis.commands.core import AsyncScript
from redis.exceptions import RedisError

from .errors import EchoError

log = logging.getLogger(__name__)

FENCED = "FENCED"
STANDBY_POLL = 0.5  # seconds between a standby's attempts to take a free lease

_ACQUIRE = """
local cur = redis.call('GET', KEYS[1])
if cur then
  local sep = string.find(cur, ':', 1, true)
  if not sep or string.sub(cur, sep + 1) ~= ARGV[1] then return false end
end
local token = redis.call('INCR', KEYS[2])
local value = token .. ':' .. ARGV[1]
redis.call('SET', KEYS[1], value, 'PX', ARGV[2])
return value
"""

_RENEW = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return 1
end
return 0
"""

_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""

# the prologue of every fenced write script (``Fencing``): the lease is the script's last key,
# the holder's value its last argument ('' = not fenced: a service run without a lease)
_FENCE = f"""
local holder = ARGV[#ARGV]
if holder ~= '' and redis.call('GET', KEYS[#KEYS]) ~= holder then return '{FENCED}' end
"""


class Fenced(EchoError):
    """A write refused: this replica no longer holds the lease (another one leads now)."""


class Lease:
    def __init__(self, redis: aioredis.Redis, key: str, *, ttl: float, owner: str | None = None) -> None:
        self.r = redis
        self.key = key
        self.ttl = ttl
        self.owner = owner or uuid.uuid4().hex[:12]
        self.value: str | None = None  # "<token>:<owner>" while held
        self._acquire = redis.register_script(_ACQUIRE)
        self._renew = redis.register_script(_RENEW)
        self._release = redis.register_script(_RELEASE)

    @property
    def token(self) -> int:
        return int(self.value.split(":", 1)[0]) if self.value else 0

    @property
    def held(self) -> bool:
        return self.value is not None

    async def acquire(self) -> bool:
        got = await self._acquire(
            keys=[self.key, f"{self.key}:fence"], args=[self.owner, int(self.ttl * 1000)]
        )
        self.value = got.decode() if isinstance(got, bytes) else got or None
        return self.value is not None

    async def renew(self) -> bool:
        if self.value is None:
            return False
        ok = await self._renew(keys=[self.key], args=[self.value, int(self.ttl * 1000)])
        if not ok:
            self.value = None
        return bool(ok)

    async def release(self) -> None:
        value, self.value = self.value, None
        if value is not None:
            with contextlib.suppress(RedisError, OSError):
                await self._release(keys=[self.key], args=[value])

    def holding(self) -> str:
        """This replica's value of the lease; ``Fenced`` at once when it does not hold it."""
        if self.value is None:
            raise Fenced(f"not the holder of {self.key}: another replica leads")
        return self.value

    def check(self, result: object) -> None:
        """Raise ``Fenced`` when a fenced script refused its writes."""
        if result in (FENCED, FENCED.encode()):
            self.value = None
            raise Fenced(f"no longer the holder of {self.key}: another replica leads now")


class Fencing:
    """A store's write scripts, fenced by its service's lease.

    ``script(body)`` registers a Lua script behind the fencing prologue; ``run`` (or ``queue``,
    in a pipeline) calls it with the lease key appended to its keys and this replica's value
    to its arguments: the script writes nothing and the call raises ``Fenced`` when another
    replica holds the lease. ``lease`` None (a service run without a lease): the same scripts
    run unfenced."""

    def __init__(self, redis: aioredis.Redis, key: str, lease: Lease | None) -> None:
        self.r = redis
        self.key = lease.key if lease is not None else key
        self.lease = lease

    def script(self, body: str) -> AsyncScript:
        return self.r.register_script(_FENCE + body)

    def _holder(self) -> str:
        return self.lease.holding() if self.lease is not None else ""

    async def run(self, script: AsyncScript, keys: list[str], args: list[Any]) -> Any:
        """The script's result; ``Fenced`` when this replica no longer leads."""
        return self.check(await script(keys=[*keys, self.key], args=[*args, self._holder()]))

    async def queue(self, pipe: Pipeline, script: AsyncScript, keys: list[str], args: list[Any]) -> None:
        """Queue the script in ``pipe``; ``check`` each of the pipeline's results."""
        await script(keys=[*keys, self.key], args=[*args, self._holder()], client=pipe)

    def check(self, result: Any) -> Any:
        if self.lease is not None:
            self.lease.check(result)
        return result


class Leadership:
    """Run ``body`` only while this replica holds ``lease``."""

    def __init__(self, lease: Lease, what: str) -> None:
        self.lease = lease
        self.what = what
        self.elected = asyncio.Event()
        self.attempts = 0  # acquisitions tried (a standby's count grows while it waits)

    async def run(self, stop: asyncio.Event, body: Callable[[], Coroutine[Any, Any, None]]) -> None:
        lease, period = self.lease, self.lease.ttl / 3
        standby = min(period, STANDBY_POLL)  # a standby looks often: takeover within TTL + this
        task: asyncio.Task[None] | None = None
        held_until = 0.0
        waiting_logged = False
        me = asyncio.current_task()
        try:
            while not stop.is_set():
                if me is not None and me.cancelling():
                    # a cancel that an awaited library swallowed (seen with a Redis call cut
                    # short): honour it here, or this replica would go on leading
                    raise asyncio.CancelledError
                now = time.monotonic()
                try:
                    if task is None:
                        self.attempts += 1
                        async with asyncio.timeout(period):
                            got = await lease.acquire()
                        if got:
                            held_until = now + lease.ttl
                            log.warning(
                                "%s: leader now (lease %s, fencing token %d)",
                                self.what,
                                lease.key,
                                lease.token,
                            )
                            self.elected.set()
                            task = asyncio.create_task(body(), name=f"leader-{self.what}")
                            waiting_logged = False
                        elif not waiting_logged:
                            log.info("%s: standing by (another replica holds %s)", self.what, lease.key)
                            waiting_logged = True
                    else:
                        async with asyncio.timeout(max(0.05, held_until - time.monotonic())):
                            renewed = await lease.renew()
                        if renewed:
                            held_until = now + lease.ttl
                        else:
                            await self._step_down(task, "the lease was taken over")
                            task = None
                except (RedisError, OSError, TimeoutError) as e:
                    if task is not None and time.monotonic() + period >= held_until:
                        lease.value = None  # it expires before we could renew it: act no more
                        await self._step_down(task, f"cannot renew the lease ({type(e).__name__})")
                        task = None
                if task is not None and task.done():
                    exc = None if task.cancelled() else task.exception()
                    await lease.release()  # let a standby take over at once
                    await self._step_down(task, f"its loops ended ({exc!r})" if exc else "its loops ended")
                    task = None
                # asyncio.timeout, not wait_for: in 3.11 a wait_for cancelled as it set up its
                # timeout kept the task waiting on a future nobody completes (seen: a master
                # whose API port was taken never exited)
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(period if task is not None else standby):
                        await stop.wait()
        finally:
            if task is not None:
                await self._step_down(task, "stopping")
                await lease.release()

    async def _step_down(self, task: asyncio.Task[None], why: str) -> None:
        log.warning("%s: no longer the leader: %s", self.what, why)
        self.elected.clear()
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        return None
