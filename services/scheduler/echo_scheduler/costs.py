"""The cost model every strategy minimises (and the ILP encodes exactly).

Every channel crosses a broker, even between two tasks on one device, so the latency of
an edge e = (u -> v) with u on device a and v on device b is::

    hop(e) = one_way(a, β) + one_way(b, β) + bytes_e · (serf(a) + serf(b))        (direct)
    hop(e) = one_way(a, β1) + one_way(r, β1) + PROC_MS + one_way(r, β2) + one_way(b, β2)
             + bytes_e · (serf(a) + 2·serf(r) + serf(b))                           (relay r)

where β is the broker both reach (NATS preferred), ``one_way`` and the uplink bandwidth
come from ``fleet`` (declared uplink, else measured RTT/2, else a declared link to a
cloud site, else a tier default), ``serf(d) = 8 / (bandwidth(d) · 1000)`` ms per byte
(the time a record takes through the uplink) and PROC_MS is a per-task processing
constant. Finish times follow the DAG: ``F(t) = PROC_MS + max over inputs u of
(F(u) + hop(u -> t))``, ``F(source) = PROC_MS``. The objective, in ms-equivalents::

    latency  = max_t F(t)                                   (the critical path)
    transfer = Σ_d W_TRANSFER · rho_d + W_OVERLOAD · max(0, rho_d - RHO_MAX)
               rho_d = Mbit/s this dataflow sends through d's uplink / bandwidth(d)
               (an edge's bytes go up from its producer's device and down to its
               consumer's; a relay carries them both ways)
    load     = Σ_d W_LOAD · (g(f_d) - g(f0_d)),  g(f) = f + 2·max(0, f - 0.5) + 8·max(0, f - 0.8)
               f_d = max(CPU, memory) fraction of d in use after placing (f0_d: before,
               what other dataflows hold), so filling a device past half, and past 80 %,
               costs more: tasks spread instead of piling up
             + Σ_d W_OVERLOAD · (max(0, loop_d / speed_d - RHO_MAX)
                                 + max(0, busy_d / (speed_d · cores_d) - RHO_MAX))
               the agent's processing: loop_d = the records/s its event loop handles (one
               core: every task's channels, and the operators not in a worker process),
               busy_d = with its worker processes' (every core), each weighted by a cost per
               record (``hints.cost``, else the catalogue's; forwarding a record = 1: a task
               in a worker puts 1 per record on the loop for its channels, its operator's
               cost on a worker); speed_d = the records/s one core of d's agent forwards
               (``capacity.records_per_s``). Declared CPU shares
               say nothing of the rate: nine ETL stages fit one agent's cores on paper and
               saturate its single loop at a few thousand records/s
    total    = latency + transfer + load

Rates: a source emits ``hints.rate`` records/s (default 100; 1 for a source of files),
a task emits ``selectivity`` (default 1.0) x the records it receives, an edge carries
its producer's output of ``record_bytes`` (default 256 B; 1 MiB for files); an observed
rate (records/s out, ``PlaceRequest.rates``) replaces the estimate of its task and
propagates downstream. A task's processing is the records/s it takes in (a source: emits)
times its cost per record.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TypeVar, cast

import numpy as np

from echo_shared.models import TaskSpec
from echo_shared.operators import PYTHON_PREFIX, Kind, lookup

from .fleet import Fleet, FloatArray, Ledger

PROC_MS = 0.5
W_TRANSFER = 10.0
RHO_MAX = 0.8
W_OVERLOAD = 1000.0
W_LOAD = 10.0
LOAD_KNEES = ((0.5, 2.0), (0.8, 8.0))

DEFAULT_RATE = 100.0
DEFAULT_FILE_RATE = 1.0
DEFAULT_RECORD_BYTES = 256
DEFAULT_FILE_BYTES = 1 << 20
TINY = 1e-12

N = TypeVar("N", float, FloatArray)


def g(f: N) -> N:
    """The convex load penalty of a device at load fraction ``f``."""
    out = f
    for knee, slope in LOAD_KNEES:
        out = out + slope * np.maximum(0.0, f - knee)
    return out


def load_fraction(cpu_used: N, mem_used: N, cap_cpu: N, cap_mem: N) -> N:
    return cast(N, np.maximum(cpu_used / np.maximum(cap_cpu, TINY), mem_used / np.maximum(cap_mem, TINY)))


def overload(rho: N) -> N:
    return cast(N, np.maximum(0.0, rho - RHO_MAX))


@dataclass(frozen=True)
class Traffic:
    """Rates (records/s out), bytes per record and Mbit/s of every task and edge, and the
    processing every task puts on its agent (records/s, forwarding equivalents)."""

    rate_out: list[float]
    record_bytes: list[int]
    edge_mbps: list[float]  # by edge index
    task_mbps: list[float]  # through the task's device: its inputs (down) + outputs (up)
    loop: list[float]  # what the task puts on its agent's loop (records/s, forwarding equivalents)
    work: list[float]  # ... on a worker process of its agent

    @classmethod
    def of(
        cls,
        tasks: Sequence[TaskSpec],
        order: Sequence[int],
        edges: Sequence[tuple[int, int]],
        inputs: Sequence[Sequence[int]],
        rates: Mapping[str, float] | None = None,
    ) -> Traffic:
        rates = rates or {}
        n = len(tasks)
        nbytes = [record_bytes(t) for t in tasks]
        out = [0.0] * n
        loop = [0.0] * n
        work = [0.0] * n
        for i in order:
            t = tasks[i]
            inflow = [out[edges[e][0]] for e in inputs[i]] if inputs[i] else None
            out[i] = rate_out(t, rates, inflow)
            loop[i], work[i] = processing(t, out[i] if inflow is None else sum(inflow))
        edge_mbps = [out[u] * nbytes[u] * 8 / 1e6 for u, _ in edges]
        task_mbps = [0.0] * n
        for e, (u, v) in enumerate(edges):
            task_mbps[u] += edge_mbps[e]
            task_mbps[v] += edge_mbps[e]
        return cls(out, nbytes, edge_mbps, task_mbps, loop, work)


def processing(task: TaskSpec, records: float) -> tuple[float, float]:
    """(on the agent's loop, on a worker) for ``records``/s through ``task`` (in; a source: out)."""
    if runs_in_worker(task):
        return records, records * cost_per_record(task)
    return records * cost_per_record(task), 0.0


def cost_per_record(task: TaskSpec) -> float:
    """CPU per record in, relative to forwarding one: its hint, else its operator's estimate."""
    if task.hints.cost is not None:
        return task.hints.cost
    info = lookup(task.operator)
    return info.cost if info is not None else 1.0


def runs_in_worker(task: TaskSpec) -> bool:
    """A user operator, or a task that asked for a worker process (``resources.worker``)."""
    return task.resources.worker or task.operator.startswith(PYTHON_PREFIX)


def rate_out(task: TaskSpec, rates: Mapping[str, float], inflow: Sequence[float] | None) -> float:
    """Records/s out of ``task``: observed (``rates``), else a source's hint or default, else
    its selectivity times what its inputs send it (``inflow``, None for a source)."""
    if task.id in rates:
        return max(0.0, float(rates[task.id]))
    if inflow is None:
        default = DEFAULT_FILE_RATE if _produces_files(task) else DEFAULT_RATE
        return task.hints.rate if task.hints.rate is not None else default
    sel = task.hints.selectivity if task.hints.selectivity is not None else 1.0
    return sel * sum(inflow)


def record_bytes(task: TaskSpec) -> int:
    """Bytes of one record ``task`` sends: its hint, else 1 MiB for files, 256 B for records."""
    if task.hints.record_bytes:
        return task.hints.record_bytes
    return DEFAULT_FILE_BYTES if _produces_files(task) else DEFAULT_RECORD_BYTES


def _produces_files(task: TaskSpec) -> bool:
    info = lookup(task.operator)
    return info is not None and info.kinds_for(task.config)[1] is Kind.files


@dataclass
class Costs:
    """The objective's terms for a complete placement, and per task."""

    latency_ms: float
    transfer: float
    load: float
    finish_ms: list[float]  # by task index
    channel_ms: list[float]  # the slowest input channel of each task (0 for sources)

    @property
    def total(self) -> float:
        return self.latency_ms + self.transfer + self.load

    def as_dict(self) -> dict[str, float]:
        return {
            "latency_ms": round(self.latency_ms, 6),
            "transfer": round(self.transfer, 6),
            "load": round(self.load, 6),
            "total": round(self.total, 6),
        }


def transfer_cost(fleet: Fleet, traffic: FloatArray) -> float:
    rho = traffic / fleet.bandwidth
    return float(W_TRANSFER * rho.sum() + W_OVERLOAD * overload(rho).sum())


def load_cost(fleet: Fleet, before: Ledger, after: Ledger) -> float:
    f0 = load_fraction(before.used_cpu, before.used_mem, fleet.cap_cpu, fleet.cap_mem)
    f1 = load_fraction(after.used_cpu, after.used_mem, fleet.cap_cpu, fleet.cap_mem)
    return (
        float(W_LOAD * (g(f1) - g(f0)).sum()) + processing_cost(fleet, after) - processing_cost(fleet, before)
    )


def processing_cost(fleet: Fleet, ledger: Ledger) -> float:
    """W_OVERLOAD · (loop and whole-agent saturation past RHO_MAX), summed over devices."""
    return float(W_OVERLOAD * (overload(loop_rho(fleet, ledger)) + overload(busy_rho(fleet, ledger))).sum())


def loop_rho(fleet: Fleet, ledger: Ledger) -> FloatArray:
    """The share of one core each agent's event loop spends on this placement's tasks."""
    return ledger.loop / fleet.speed


def busy_rho(fleet: Fleet, ledger: Ledger) -> FloatArray:
    """The share of all its cores each agent spends on this placement's tasks."""
    return ledger.busy / (fleet.speed * fleet.cores)


def evaluate(
    fleet: Fleet,
    before: Ledger,
    after: Ledger,
    traffic: FloatArray,
    order: Sequence[int],
    edges: Sequence[tuple[int, int]],
    inputs: Sequence[Sequence[int]],
    hop_ms: Sequence[float],
) -> Costs:
    """The objective of a complete placement.

    ``after`` holds the tasks' resources (a relay's small reservation is not part of the
    load term), ``traffic`` the Mbit/s through every uplink (tasks and relays), ``hop_ms``
    each edge's latency over its chosen channel or relay.
    """
    n = len(inputs)
    finish = [0.0] * n
    channel = [0.0] * n
    for t in order:
        worst = 0.0
        slowest = 0.0
        for e in inputs[t]:
            worst = max(worst, finish[edges[e][0]] + hop_ms[e])
            slowest = max(slowest, hop_ms[e])
        finish[t] = PROC_MS + worst
        channel[t] = slowest
    return Costs(
        latency_ms=max(finish, default=0.0),
        transfer=transfer_cost(fleet, traffic),
        load=load_cost(fleet, before, after),
        finish_ms=finish,
        channel_ms=channel,
    )
