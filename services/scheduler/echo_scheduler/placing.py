"""Placement: ``(spec, devices, reserved) -> Placement``, pure and deterministic.

Hard constraints, checked in this order for every task: device online, explicit
device, tier, input stream, labels, runtime, free capacity (CPU and memory, after
what other dataflows and earlier tasks of this one reserved). Among the devices that
pass, the greedy choice minimises ``load after placing + 0.25 if not co-located with
an upstream task``, ties broken by device id, so the same input always gives the same
placement. Every task gets a one-line reason; a task no device can host fails the
whole placement with a reason naming the constraint that ruled the last device out.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from echo_shared.errors import PlacementError
from echo_shared.models import (
    ChannelSpec,
    DataflowSpec,
    DeviceRecord,
    DeviceStatus,
    Placement,
    TaskPlacement,
    TaskSpec,
)
from echo_shared.names import Names
from echo_shared.operators import lookup

from .validating import topological_order, validate

COLOCATION_BONUS = 0.25


@dataclass
class Free:
    cpu: float
    memory_mb: float

    def load_after(self, dev: DeviceRecord, cpu: float, mem: float) -> float:
        cap_cpu = dev.capacity.cpu or 1.0
        cap_mem = float(dev.capacity.memory_mb or 1)
        used_cpu = cap_cpu - self.cpu + cpu
        used_mem = cap_mem - self.memory_mb + mem
        return max(used_cpu / cap_cpu, used_mem / cap_mem)


Check = tuple[str, Callable[[DeviceRecord], bool]]


def _checks(task: TaskSpec, free: dict[str, Free]) -> list[Check]:
    c = task.placement
    out: list[Check] = [("online", lambda d: d.status is DeviceStatus.online)]
    if c.device:
        out.append((f"device {c.device}", lambda d: d.id == c.device))
    tiers = c.tiers()
    if tiers:
        names = "/".join(t.value for t in tiers)
        out.append((f"tier {names}", lambda d: d.tier in tiers))
    if c.input_stream:
        stream = c.input_stream
        out.append((f"input stream {stream}", lambda d: stream in d.input_streams))
    for key, value in sorted(c.labels.items()):
        out.append((f"label {key}={value}", _has_label(key, value)))
    info = lookup(task.operator)
    runtime = info.runtime if info else "python"
    out.append((f"runtime {runtime}", lambda d: runtime in d.runtimes))
    cpu, mem = task.resources.cpu, task.resources.memory_mb
    out.append((f"{cpu:g} CPU free", lambda d: free[d.id].cpu + 1e-9 >= cpu))
    out.append((f"{mem} MiB free", lambda d: free[d.id].memory_mb >= mem))
    return out


def _has_label(key: str, value: str) -> Callable[[DeviceRecord], bool]:
    return lambda d: d.labels.get(key) == value


def _why_none(task: TaskSpec, devices: Sequence[DeviceRecord], checks: list[Check]) -> str:
    remaining = list(devices)
    passed: list[str] = []
    for label, ok in checks:
        left = [d for d in remaining if ok(d)]
        if not left:
            before = ", ".join(d.id for d in remaining[:5]) + ("..." if len(remaining) > 5 else "")
            if not devices:
                return f"task {task.id!r}: no devices are registered"
            if not passed:
                return f"task {task.id!r}: no device satisfies {label}"
            return (
                f"task {task.id!r}: no device satisfies {label} among those with "
                f"{', '.join(passed)} ({before})"
            )
        passed.append(label)
        remaining = left
    return f"task {task.id!r}: no device fits"


def place(
    dataflow_id: str,
    spec: DataflowSpec,
    devices: Sequence[DeviceRecord],
    reserved: dict[str, tuple[float, float]] | None = None,
    names: Names | None = None,
) -> Placement:
    """Place every task of a valid spec, or raise ``PlacementError`` with the reason."""
    validate(spec)
    names = names or Names()
    reserved = reserved or {}
    devs = sorted(devices, key=lambda d: d.id)
    free = {
        d.id: Free(
            d.capacity.cpu - reserved.get(d.id, (0.0, 0.0))[0],
            d.capacity.memory_mb - reserved.get(d.id, (0.0, 0.0))[1],
        )
        for d in devs
    }
    by_id = {t.id: t for t in spec.tasks}
    chosen: dict[str, str] = {}
    placements: dict[str, TaskPlacement] = {}
    for tid in topological_order(spec):
        task = by_id[tid]
        checks = _checks(task, free)
        candidates = [d for d in devs if all(ok(d) for _, ok in checks)]
        if not candidates:
            raise PlacementError(_why_none(task, devs, checks))
        upstream_devices = frozenset(chosen[u] for u in spec.inputs_of(tid) if u in chosen)
        cpu, mem = task.resources.cpu, float(task.resources.memory_mb)
        best = min(candidates, key=lambda d: _score(d, free[d.id], cpu, mem, upstream_devices))
        free[best.id].cpu -= cpu
        free[best.id].memory_mb -= mem
        chosen[tid] = best.id
        placements[tid] = TaskPlacement(
            task=tid, device=best.id, reason=_reason(task, best, candidates, upstream_devices)
        )
    channels = [
        ChannelSpec(
            from_task=e.from_,
            to_task=e.to,
            transport="mqtt",
            topic=names.data_topic(dataflow_id, e.from_, e.to),
            reason=(
                "same device; MQTT keeps the channel durable if either task moves"
                if chosen[e.from_] == chosen[e.to]
                else f"{chosen[e.from_]} and {chosen[e.to]} share the MQTT broker"
            ),
        )
        for e in spec.edges
    ]
    return Placement(tasks=[placements[t.id] for t in spec.tasks], channels=channels)


def _score(
    d: DeviceRecord, free: Free, cpu: float, mem: float, upstream: frozenset[str]
) -> tuple[float, str]:
    """Lower is better: the device's load after placing, plus a penalty for leaving upstream."""
    s = free.load_after(d, cpu, mem)
    if upstream and d.id not in upstream:
        s += COLOCATION_BONUS
    return (round(s, 9), d.id)


def _reason(
    task: TaskSpec, best: DeviceRecord, candidates: list[DeviceRecord], upstream: frozenset[str]
) -> str:
    c = task.placement
    parts: list[str] = []
    if c.device:
        parts.append(f"pinned to device {c.device}")
    if c.input_stream:
        parts.append(f"hosts input stream {c.input_stream}")
    if c.tiers():
        parts.append(f"tier {best.tier.value}")
    if c.labels:
        parts.append("labels " + ",".join(f"{k}={v}" for k, v in sorted(c.labels.items())))
    if best.id in upstream:
        parts.append("co-located with its upstream task")
    if len(candidates) > 1:
        parts.append(f"least loaded of {len(candidates)} eligible devices")
    elif not parts:
        parts.append("the only eligible device")
    return f"{best.id}: " + "; ".join(parts)
