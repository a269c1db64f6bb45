"""Hard constraints: what a device must offer to host a task, as masks over the fleet.

Checked in this order (the order of the explanation when nothing fits): device online,
explicit device, tier, input stream, labels, runtime (the operator's catalogue runtime;
``python:`` operators need ``python``), free CPU, free memory, free accelerators (counted
and reserved like CPU), anti-affinity (not on a device that hosts one of the listed
tasks), and a route for every edge (see ``channels``). Co-location (``colocate_with``)
makes units: tasks that must share a device are placed together, on a device that
satisfies all of them, with their resources summed.

Static constraints (everything but capacity, affinity and routes) depend only on the
device, so their mask is computed once per distinct requirement and cached by the fleet.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from echo_shared.errors import PlacementError
from echo_shared.models import DeviceRecord, TaskSpec
from echo_shared.operators import lookup

from .fleet import BoolArray, Fleet, IntArray, Ledger

EPS = 1e-9


@dataclass(frozen=True)
class Requirement:
    """What one task asks of its device."""

    task: str
    device: str | None
    tiers: tuple[str, ...]
    stream: str | None
    labels: tuple[tuple[str, str], ...]
    runtime: str
    cpu: float
    mem: float
    accelerators: tuple[tuple[str, int], ...]
    avoid: tuple[str, ...] = ()  # devices it must leave (a migration off them, a failover)

    @classmethod
    def of(cls, task: TaskSpec, avoid: Sequence[str] = ()) -> Requirement:
        c = task.placement
        info = lookup(task.operator)
        return cls(
            task=task.id,
            device=c.device,
            tiers=tuple(sorted(t.value for t in c.tiers())),
            stream=c.input_stream,
            labels=tuple(sorted(c.labels.items())),
            runtime=info.runtime if info else "python",
            cpu=float(task.resources.cpu),
            mem=float(task.resources.memory_mb),
            accelerators=tuple(sorted((k, n) for k, n in c.accelerators.items() if n > 0)),
            avoid=tuple(sorted(set(avoid))),
        )

    @property
    def pinned(self) -> bool:
        """Pinned by an explicit device or an input stream (round-robin keeps these)."""
        return self.device is not None or self.stream is not None

    def static_checks(self) -> tuple[tuple[str, str, str], ...]:
        """(label for messages, fleet mask kind, value), in checking order."""
        return self._checks

    @functools.cached_property
    def _checks(self) -> tuple[tuple[str, str, str], ...]:  # asked for per unit, per pass
        out = [("online", "online", "")]
        if self.device:
            out.append((f"device {self.device}", "device", self.device))
        if self.tiers:
            out.append((f"tier {'/'.join(self.tiers)}", "tier", ",".join(self.tiers)))
        if self.stream:
            out.append((f"input stream {self.stream}", "stream", self.stream))
        out += [(f"label {k}={v}", "label", f"{k}={v}") for k, v in self.labels]
        out.append((f"runtime {self.runtime}", "runtime", self.runtime))
        if self.avoid:
            out.append((f"not on {', '.join(self.avoid)}", "avoid", ",".join(self.avoid)))
        return tuple(out)


def check_mask(fleet: Fleet, kind: str, value: str) -> BoolArray:
    if kind == "avoid":
        out = np.ones(len(fleet), dtype=np.bool_)
        for d in value.split(","):
            out &= ~fleet.mask("device", d)
        return out
    if kind == "tier":
        out = np.zeros(len(fleet), dtype=np.bool_)
        for t in value.split(","):
            out |= fleet.mask("tier", t)
        return out
    return fleet.mask(kind, value)


def static_mask(fleet: Fleet, reqs: Sequence[Requirement]) -> BoolArray:
    """Devices that satisfy every static constraint of every requirement (a unit's members)."""
    out = np.ones(len(fleet), dtype=np.bool_)
    seen: set[tuple[str, str]] = set()
    for r in reqs:
        for _, kind, value in r.static_checks():
            if (kind, value) not in seen:
                seen.add((kind, value))
                out &= check_mask(fleet, kind, value)
    return out


def capacity_mask(ledger: Ledger, idx: IntArray, cpu: float, mem: float, acc: Mapping[str, int]) -> BoolArray:
    ok: BoolArray = (ledger.free_cpu[idx] + EPS >= cpu) & (ledger.free_mem[idx] + EPS >= mem)
    for kind, n in acc.items():
        ok &= ledger.acc_free(kind)[idx] >= n
    return ok


def satisfied(reqs: Sequence[Requirement], device: DeviceRecord, others: Sequence[str] = ()) -> list[str]:
    """The constraints a unit met on ``device`` (for the explanation)."""
    out: list[str] = []
    for r in reqs:
        for label, _, _ in r.static_checks():
            if label not in out:
                out.append(label)
    cpu = sum(r.cpu for r in reqs)
    mem = sum(r.mem for r in reqs)
    out += [f"{cpu:g} CPU free", f"{mem:g} MiB free"]
    for kind, n in sorted(sum_accelerators(reqs).items()):
        out.append(f"{n} {kind} free")
    out += list(others)
    return out


def sum_accelerators(reqs: Sequence[Requirement]) -> dict[str, int]:
    acc: dict[str, int] = {}
    for r in reqs:
        for k, n in r.accelerators:
            acc[k] = acc.get(k, 0) + n
    return acc


def _few(fleet: Fleet, mask: BoolArray) -> str:
    ids = fleet.ids(np.flatnonzero(mask)[:6])
    return ", ".join(ids[:5]) + ("..." if len(ids) > 5 else "")


def why_none(
    who: str,
    reqs: Sequence[Requirement],
    fleet: Fleet,
    ledger: Ledger,
    extra: Sequence[tuple[str, BoolArray]] = (),
) -> PlacementError:
    """The error for a unit no device can host: the first constraint that ruled out the last
    devices, and the constraints those devices had passed (``extra``: affinity, routes)."""
    if len(fleet) == 0:
        return PlacementError(f"{who}: no devices are registered")
    remaining = np.ones(len(fleet), dtype=np.bool_)
    passed: list[str] = []
    checks: list[tuple[str, BoolArray]] = []
    seen: set[str] = set()
    for r in reqs:
        for label, kind, value in r.static_checks():
            if label not in seen:
                seen.add(label)
                checks.append((label, check_mask(fleet, kind, value)))
    all_idx = np.arange(len(fleet), dtype=np.int64)
    cpu = sum(r.cpu for r in reqs)
    mem = sum(r.mem for r in reqs)
    checks.append((f"{cpu:g} CPU free", ledger.free_cpu + EPS >= cpu))
    checks.append((f"{mem:g} MiB free", ledger.free_mem + EPS >= mem))
    for kind, n in sorted(sum_accelerators(reqs).items()):
        checks.append((f"{n} {kind} free", capacity_mask(ledger, all_idx, 0.0, 0.0, {kind: n})))
    checks += list(extra)
    for label, ok in checks:
        left = remaining & ok
        if not left.any():
            if not passed:
                return PlacementError(f"{who}: no device satisfies {label}")
            return PlacementError(
                f"{who}: no device satisfies {label} among those with "
                f"{', '.join(passed)} ({_few(fleet, remaining)})"
            )
        passed.append(label)
        remaining = left
    return PlacementError(f"{who}: no device fits")
