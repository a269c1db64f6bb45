"""States staged on this device ahead of a move (``StageState``, a move's pre-copy).

The master sends a moving task's latest checkpointed state to the target while the task
still runs elsewhere; the new copy's deploy then carries only the changes since it
(``echo_shared.statedelta``), applied here to the staged state. A staged state is held
``HOLD_SECONDS`` at most (a move that was abandoned), and at most ``HOLD_MAX`` of them
(each may be large): the oldest goes first. A deploy that finds its base gone is refused
with the reason (not failed: the task stays pending), and the master sends the state whole
when it deploys again.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from echo_shared import statedelta
from echo_shared.messages import TaskSnapshot

log = logging.getLogger(__name__)

HOLD_SECONDS = 120.0
HOLD_MAX = 4


class StagedStateMissing(LookupError):
    """A deploy's restore names a staged state this device does not hold."""


class StagedStates:
    def __init__(self, hold_seconds: float = HOLD_SECONDS, hold_max: int = HOLD_MAX) -> None:
        self.hold_seconds, self.hold_max = hold_seconds, hold_max
        self._held: dict[str, tuple[float, Any]] = {}  # name -> (until, state)

    def __len__(self) -> int:
        return len(self._held)

    def put(self, name: str, state: Any) -> None:
        now = time.monotonic()
        self._held = {k: v for k, v in self._held.items() if v[0] > now and k != name}
        while len(self._held) >= self.hold_max:
            dropped = next(iter(self._held))
            del self._held[dropped]
            log.info("staged state %s dropped: %d newer ones are held", dropped, self.hold_max)
        self._held[name] = (now + self.hold_seconds, state)

    def restore(self, snapshot: TaskSnapshot) -> TaskSnapshot:
        """The snapshot with a staged base and its delta composed into the whole state
        (the base is used up); any other snapshot as it is."""
        state = snapshot.state
        if not statedelta.is_staged(state):
            return snapshot
        name = state[statedelta.BASE]
        held = self._held.pop(name, None)
        if held is None or held[0] <= time.monotonic():
            raise StagedStateMissing(
                f"the staged state {name} is not held here (expired, or the agent restarted)"
            )
        return snapshot.model_copy(update={"state": statedelta.apply(held[1], state[statedelta.DELTA])})


__all__ = ["HOLD_MAX", "HOLD_SECONDS", "StagedStateMissing", "StagedStates"]
