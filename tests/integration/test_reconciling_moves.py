"""The reconciler and a move: while a move drains a task, its stopped copy is not deployed again.

The move deploys the next copy itself. Deployed again meanwhile, the stopped copy is sent its
whole restored state just to refuse it (its device keeps the generation's tombstone): for a
100 MB state, seconds of the master's loop and the device's, in the middle of the move.
Real Redis; the agents' link records what would be sent.
"""

from __future__ import annotations

import redis.asyncio as aioredis

from echo_master.reconciling import Reconciler
from echo_master.settings import MasterSettings
from echo_master.store import DataflowStore
from echo_shared.messages import CommandAck, DeployTask
from echo_shared.models import DataflowSpec, DataflowState, Placement, TaskPlacement, TaskState
from echo_shared.names import Names


class Link:
    """The agents' link: what was sent, each deploy acknowledged as running."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, DeployTask]] = []
        self.hooks = None

    async def prepare(self, pairs: list[tuple[str, DeployTask]]) -> None:
        return None

    async def send(self, device: str, cmd: DeployTask, timeout: float) -> CommandAck:
        self.sent.append((device, cmd))
        return CommandAck.answering(cmd, device, True, TaskState.running)


async def test_a_task_a_move_drains_is_not_deployed_again(redis: aioredis.Redis, names: Names) -> None:
    store = DataflowStore(redis, names)
    spec = DataflowSpec.model_validate(
        {"name": "one", "tasks": [{"id": "count", "operator": "stats.count_by_key", "config": {"key": "k"}}]}
    )
    df_id = await store.create(spec)
    await store.set_placement(
        df_id,
        Placement(tasks=[TaskPlacement(task="count", device="fog-1", reason="test")], channels=[]),
        {"count": 1},
    )
    # the drained copy reported itself stopped; the move has not deployed the next one yet
    await store.patch_task(df_id, "count", {"state": TaskState.stopped}, generation=1)
    link = Link()
    reconciler = Reconciler(
        store,
        link,
        None,
        names,
        MasterSettings(redis_url="redis://unused", mqtt_url="mqtts://unused", nats_url="nats://unused"),
    )  # type: ignore[arg-type]
    reconciler.moving.add((df_id, "count"))
    await reconciler._converge(await store.get(df_id))
    assert link.sent == []
    df = await store.get(df_id)
    assert (df.state, df.reason) == (DataflowState.deploying, "waiting for count")
    assert df.tasks["count"].state is TaskState.stopped
    # once the move is over (here: given up), the reconciler deploys it as any other
    reconciler.moving.discard((df_id, "count"))
    await reconciler._converge(await store.get(df_id))
    assert [(d, c.task, c.generation) for d, c in link.sent] == [("fog-1", "count", 1)]
