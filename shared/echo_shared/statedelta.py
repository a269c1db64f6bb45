"""Changes to an operator's state since one of its snapshots: incremental checkpoints and
a move's pre-copy.

A large state is not shipped whole at every checkpoint: the agent sends what changed since
its latest whole checkpoint the master kept, a *delta*, and a whole one now and then; the
master keeps the delta as an object that names its base. And a large state moves in two
parts: while the task still runs, the master stages its latest kept checkpoint's state on
the target device (``StageState``); then the task drains and sends only what changed since
that checkpoint; the target applies it to the staged state. Only the delta waits for the
drain, so a move's downtime follows how much the state changed, not how large it is.

An operator's state is a JSON object; a delta names, per field of it::

    {"merge": {"counts": {"k1": 4, "k2": 1}},   # entries set in the field's object
     "drop":  {"counts": ["k3"]},                # entries removed from it
     "set":   {"next": 17}}                      # fields replaced whole

How a snapshot says it is a delta, and how the master records the move's restore:

- a snapshot state that is only changes: ``{"$delta": <delta>, "$since": <taken_at>}``,
  the changes since the checkpoint taken at ``taken_at`` (an incremental checkpoint's, or
  a drained copy's asked for them by ``StopTask.delta_from``);
- the restore the master records and deploys: ``{"$base": <object>, "bytes": n, "$delta":
  <delta>}``, the checkpoint's state in the object store plus the delta. A device that
  holds the base staged receives it so; any other gets the state composed (``apply``).
"""

from __future__ import annotations

from typing import Any

DELTA = "$delta"
SINCE = "$since"
BASE = "$base"


class DeltaError(ValueError):
    """A delta that does not fit the state it is applied to."""


def changes(delta: Any, since: float) -> dict[str, Any]:
    """A snapshot state that is ``delta``, the changes since the checkpoint taken at ``since``."""
    return {DELTA: delta, SINCE: since}


def is_changes(state: object) -> bool:
    return isinstance(state, dict) and DELTA in state and SINCE in state and len(state) == 2


def staged(base: str, size: int, delta: Any) -> dict[str, Any]:
    """A restore whose state is the object ``base`` (``size`` bytes of JSON) plus ``delta``."""
    return {BASE: base, "bytes": size, DELTA: delta}


def is_staged(state: object) -> bool:
    return isinstance(state, dict) and BASE in state and DELTA in state and len(state) == 3


def apply(state: Any, delta: Any) -> Any:
    """``state`` with ``delta`` applied (in place: the state is the caller's to give up)."""
    if not isinstance(state, dict):
        raise DeltaError(f"a delta applies to a JSON object, not {type(state).__name__}")
    if not isinstance(delta, dict) or set(delta) - {"merge", "drop", "set"}:
        raise DeltaError("a delta is an object of merge, drop and set")
    if not all(isinstance(delta.get(k) or {}, dict) for k in ("merge", "drop", "set")):
        raise DeltaError("a delta's merge, drop and set are objects")
    for name, entries in (delta.get("merge") or {}).items():
        target = state.setdefault(name, {})
        if not isinstance(target, dict) or not isinstance(entries, dict):
            raise DeltaError(f"merge into {name!r}: both must be objects")
        target.update(entries)
    for name, keys in (delta.get("drop") or {}).items():
        target = state.get(name)
        if not isinstance(target, dict) or not isinstance(keys, list):
            raise DeltaError(f"drop from {name!r}: an object and a list of keys are needed")
        for k in keys:
            target.pop(k, None)
    state.update(delta.get("set") or {})
    return state


__all__ = [
    "BASE",
    "DELTA",
    "SINCE",
    "DeltaError",
    "apply",
    "changes",
    "is_changes",
    "is_staged",
    "staged",
]
