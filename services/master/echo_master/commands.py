"""Building control commands from a dataflow's spec, placement and task records."""

from __future__ import annotations

import uuid

from echo_shared.messages import Binding, DeployTask, Reservation, StopTask
from echo_shared.models import DataflowSpec, Placement, TaskRecord


def deploy_levels(spec: DataflowSpec) -> list[list[str]]:
    """Tasks grouped so that every consumer is deployed before its producers.

    Level 0 holds the tasks with no outputs (sinks); a task's level is one more than the
    highest level of the tasks it feeds. A consumer's channel session exists before any
    producer publishes into it, so no record is published to nobody.
    """
    outputs = {t.id: spec.outputs_of(t.id) for t in spec.tasks}
    level: dict[str, int] = {}

    def depth(t: str, seen: frozenset[str] = frozenset()) -> int:
        if t in level:
            return level[t]
        if t in seen:  # cycles are rejected by validation; never loop here
            return 0
        d = 0 if not outputs[t] else 1 + max(depth(o, seen | {t}) for o in outputs[t])
        level[t] = d
        return d

    for t in spec.tasks:
        depth(t.id)
    top = max(level.values(), default=-1)
    return [[t.id for t in spec.tasks if level[t.id] == n] for n in range(top + 1)]


def deploy_command(df_id: str, spec: DataflowSpec, placement: Placement, task: TaskRecord) -> DeployTask:
    t = spec.task(task.id)
    topic = {(c.from_task, c.to_task): c.topic for c in placement.channels}
    return DeployTask(
        cmd_id=uuid.uuid4().hex,
        dataflow=df_id,
        task=t.id,
        generation=task.generation,
        operator=t.operator,
        config=t.config,
        resources=t.resources,
        inputs=[Binding(peer=src, topic=topic[(src, t.id)]) for src in spec.inputs_of(t.id)],
        outputs=[Binding(peer=dst, topic=topic[(t.id, dst)]) for dst in spec.outputs_of(t.id)],
    )


def stop_command(df_id: str, task: TaskRecord) -> StopTask:
    return StopTask(cmd_id=uuid.uuid4().hex, dataflow=df_id, task=task.id, generation=task.generation)


def add_reservation(total: dict[str, Reservation], device: str, cpu: float, memory_mb: int) -> None:
    r = total.setdefault(device, Reservation())
    r.cpu += cpu
    r.memory_mb += memory_mb
