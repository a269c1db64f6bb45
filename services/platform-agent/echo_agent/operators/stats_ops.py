"""Implementations of the stats operators (catalogue: ``echo_shared.catalogue.stats``).

``stats.window_aggregate`` computes count / sum / avg / min / max of ``field`` over windows,
per value of ``key`` when given, and emits one record per window (and key) when it closes::

    {"key": k, "op": "avg", "field": "fare_amount", "value": 12.5, "count": 40,
     "window_start": 1358101800000, "window_end": 1358101860000}

``count`` is the number of values aggregated: records whose ``field`` is a number (null,
absent and non-numeric values are ignored; without ``field``, every record). ``value`` is
null for avg/min/max of a window without values, 0 for its sum. ``key`` is null when the
aggregate is not keyed.

Count windows (``count: N``): per key, every N records; ``window_start``/``window_end`` are
the key's record numbers ``[first, last + 1)``. With ``slide: S`` a window of the last N
records closes every S records once N have arrived.

Time windows (``seconds: W``) are aligned to the epoch: ``[j * slide, j * slide + W)``, with
``slide = W`` (tumbling) unless given; a record belongs to every window containing its time.

- Event time (``time_field``): times are read from the records (``time_unit`` ms or s), and
  ``window_start``/``window_end`` are in that unit. A window closes when the newest time
  seen, minus ``lateness``, reaches its end, so closing is deterministic and survives
  replays. A record whose every window already closed is late: dropped and counted.
  Records without a numeric time are skipped (counted, logged).
- Processing time (no ``time_field``): the agent's wall clock, in seconds. Windows close
  when a record arrives after their end, at the end of the stream, and — when the runner
  gives the operator an ``emit`` callback on its context — on a timer, without new input.

At the end of the stream every open window is emitted (the final, partial ones). At most
``max_windows`` windows (count windows: keys) are held; beyond that the oldest is closed
early. State (open windows, the newest event time) is snapshotted for migration.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import logging
import math
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Iterable
from typing import Any

from echo_shared.catalogue.stats import WindowAggregateConfig

from .base import Operator, Record, TaskContext
from .etl.values import key_text, number

log = logging.getLogger(__name__)


class Agg:
    """count, sum, min and max of the values added; mergeable, JSON-able."""

    __slots__ = ("hi", "lo", "n", "total")

    def __init__(
        self, n: int = 0, total: float = 0.0, lo: float | None = None, hi: float | None = None
    ) -> None:
        self.n, self.total, self.lo, self.hi = n, total, lo, hi

    def add(self, v: float) -> None:
        self.n += 1
        self.total += v
        self.lo = v if self.lo is None or v < self.lo else self.lo
        self.hi = v if self.hi is None or v > self.hi else self.hi

    def result(self, op: str) -> float | int | None:
        if op == "count":
            return self.n
        if op == "sum":
            return self.total
        if op == "avg":
            return self.total / self.n if self.n else None
        return self.lo if op == "min" else self.hi

    def dump(self) -> list[Any]:
        return [self.n, self.total, self.lo, self.hi]

    @classmethod
    def load(cls, raw: list[Any]) -> Agg:
        return cls(int(raw[0]), float(raw[1]), raw[2], raw[3])


def _plain(x: float) -> float | int:
    return int(x) if x.is_integer() else x


class _KeyCount:
    """One key's count window: records seen, where the current window starts, its values."""

    __slots__ = ("agg", "n", "raw", "start", "values")

    def __init__(self, raw: Any, size: int, sliding: bool) -> None:
        self.raw = raw
        self.n = 0  # records of this key seen
        self.start = 0  # record number where the open (tumbling) window / unemitted part starts
        self.agg = Agg()
        self.values: deque[float | None] | None = deque(maxlen=size) if sliding else None


class WindowAggregate(Operator):
    """``stats.window_aggregate``: see the module docstring."""

    stateful = True
    config: WindowAggregateConfig

    def __init__(self, config: WindowAggregateConfig) -> None:
        super().__init__(config)
        c = config
        self.sliding = c.slide is not None
        # count windows
        self.keys: OrderedDict[str, _KeyCount] = OrderedDict()
        # time windows, in the unit of the times (ms or s of time_field; s of the wall clock)
        unit = 1000.0 if c.time_field is not None and c.time_unit == "ms" else 1.0
        self.size = (c.seconds or 0.0) * unit
        self.step = (c.slide or c.seconds or 0.0) * unit
        self.overlap = round(self.size / self.step) if self.step else 1
        self.lateness = c.lateness * unit
        self.windows: dict[tuple[str, int], tuple[Any, Agg]] = {}
        self.heap: list[tuple[int, int, str]] = []  # (window index, arrival order, key)
        self.order = 0
        self.newest: float | None = None  # event time: the newest time seen
        self.late = 0
        self.untimed = 0
        self._timer: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()
        self.clock: Callable[[], float] = time.time  # processing time (replaceable in tests)

    # ------------------------------------------------------------------ lifecycle

    async def open(self, ctx: TaskContext) -> None:
        await super().open(ctx)
        emit: Callable[[list[Record]], Any] | None = getattr(ctx, "emit", None)
        if self.config.seconds is not None and self.config.time_field is None and callable(emit):
            self._timer = asyncio.create_task(self._tick(emit), name=f"window-timer-{ctx.task}")

    close_emits = True  # close() emits the open windows: a moved copy keeps them instead

    async def suspend(self) -> None:
        await self._stop_timer()

    async def _stop_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._timer
            self._timer = None

    async def close(self) -> Iterable[Record] | None:
        await self._stop_timer()
        if self.config.count is not None:
            out = [r for k in list(self.keys) for r in self._flush_key(k)]
            self.keys.clear()
            return out
        return self._close_until(math.inf)

    async def _tick(self, emit: Callable[[list[Record]], Any]) -> None:
        """Processing time: close each window at its end, even when no record comes."""
        while True:
            if not self.heap:
                self._wake.clear()
                await self._wake.wait()
                continue
            due = self._end(self.heap[0][0]) - self.clock()
            if due > 0:
                self._wake.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), due)
                continue
            out = self._close_until(self.clock())
            if out:
                emit(out)

    # ------------------------------------------------------------------ records

    def _value(self, record: Record) -> float | None:
        return 0.0 if self.config.field is None else number(record.get(self.config.field))

    def _out(self, raw_key: Any, agg: Agg, start: float | int, end: float | int) -> Record:
        c = self.config
        return {
            "key": raw_key,
            "op": c.op,
            "field": c.field,
            "value": agg.result(c.op),
            "count": agg.n,
            "window_start": start,
            "window_end": end,
        }

    def process(self, record: Record) -> Iterable[Record] | None:
        if self.config.count is not None:
            return self._process_count(record)
        return self._process_time(record)

    # count windows

    def _process_count(self, record: Record) -> list[Record]:
        c = self.config
        assert c.count is not None
        raw = record.get(c.key) if c.key is not None else None
        k = key_text(raw)
        state = self.keys.get(k)
        out: list[Record] = []
        if state is None:
            state = self.keys[k] = _KeyCount(raw, c.count, self.sliding)
            while len(self.keys) > c.max_windows:
                out.extend(self._flush_key(next(iter(self.keys))))
        else:
            self.keys.move_to_end(k)
        v = self._value(record)
        state.n += 1
        if state.values is None:
            if v is not None:
                state.agg.add(v)
            if state.n - state.start == c.count:
                out.append(self._out(raw, state.agg, state.start, state.n))
                state.agg, state.start = Agg(), state.n
        else:
            state.values.append(v)
            step = int(c.slide or c.count)
            if state.n >= c.count and (state.n - c.count) % step == 0:
                out.append(self._out(raw, self._agg_of(state.values), state.n - c.count, state.n))
                state.start = state.n
        return out

    @staticmethod
    def _agg_of(values: Iterable[float | None]) -> Agg:
        agg = Agg()
        for v in values:
            if v is not None:
                agg.add(v)
        return agg

    def _flush_key(self, k: str) -> list[Record]:
        """Close a key's partial window (end of stream, or the key evicted)."""
        state = self.keys.pop(k)
        if state.n == state.start:
            return []
        if state.values is None:
            return [self._out(state.raw, state.agg, state.start, state.n)]
        return [self._out(state.raw, self._agg_of(state.values), state.n - len(state.values), state.n)]

    # time windows

    def _end(self, j: int) -> float:
        return j * self.step + self.size

    def _process_time(self, record: Record) -> list[Record]:
        c = self.config
        if c.time_field is None:
            t = self.clock()
            watermark = t
        else:
            got = number(record.get(c.time_field))
            if got is None:
                self.untimed += 1
                if self.untimed <= 10 or self.untimed % 1000 == 0:
                    log.warning("window_aggregate skips a record without a numeric %s", c.time_field)
                return []
            t = got
            newest = t if self.newest is None else max(self.newest, t)
            watermark = (self.newest if self.newest is not None else -math.inf) - self.lateness
            self.newest = newest
        raw = record.get(c.key) if c.key is not None else None
        k = key_text(raw)
        v = self._value(record)
        last = math.floor(t / self.step)
        added = False
        for j in range(last - self.overlap + 1, last + 1):
            if self._end(j) <= watermark:
                continue  # that window has closed: a late record
            added = True
            win = self.windows.get((k, j))
            if win is None:
                win = self.windows[(k, j)] = (raw, Agg())
                heapq.heappush(self.heap, (j, self.order, k))
                self.order += 1
                self._wake.set()
            if v is not None:
                win[1].add(v)
        if not added:
            self.late += 1
        if c.time_field is not None:
            assert self.newest is not None
            watermark = self.newest - self.lateness
        out = self._close_until(watermark)
        while len(self.windows) > c.max_windows:
            out.extend(self._close_first())
        return out

    def _close_first(self) -> list[Record]:
        j, _, k = heapq.heappop(self.heap)
        raw, agg = self.windows.pop((k, j))
        start, end = j * self.step, self._end(j)
        return [self._out(raw, agg, _plain(start), _plain(end))]

    def _close_until(self, watermark: float) -> list[Record]:
        out: list[Record] = []
        while self.heap and self._end(self.heap[0][0]) <= watermark:
            out.extend(self._close_first())
        return out

    # ------------------------------------------------------------------ state

    def snapshot(self) -> Any:
        if self.config.count is not None:
            keys = [
                [k, s.raw, s.n, s.start, s.agg.dump(), None if s.values is None else list(s.values)]
                for k, s in self.keys.items()
            ]
            return {"keys": keys}
        windows = [
            [k, self.windows[(k, j)][0], j, self.windows[(k, j)][1].dump()] for j, _, k in sorted(self.heap)
        ]
        return {"windows": windows, "newest": self.newest, "late": self.late}

    def restore(self, state: Any) -> None:
        c = self.config
        if c.count is not None:
            self.keys = OrderedDict()
            for k, raw, n, start, agg, values in state["keys"]:
                s = _KeyCount(raw, c.count, self.sliding)
                s.n, s.start, s.agg = int(n), int(start), Agg.load(agg)
                if s.values is not None and values is not None:
                    s.values.extend(values)
                self.keys[str(k)] = s
            return
        self.windows, self.heap, self.order = {}, [], 0
        for k, raw, j, agg in state["windows"]:
            self.windows[(str(k), int(j))] = (raw, Agg.load(agg))
            self.heap.append((int(j), self.order, str(k)))
            self.order += 1
        heapq.heapify(self.heap)
        self.newest = state.get("newest")
        self.late = int(state.get("late", 0))
        self._wake.set()


OPERATORS: dict[str, type[Operator]] = {
    "stats.window_aggregate": WindowAggregate,
}
