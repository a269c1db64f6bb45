"""Building control commands from a dataflow's spec, placement and task records."""

from __future__ import annotations

import uuid

from echo_shared.messages import Binding, DeployTask, Reservation, StopTask
from echo_shared.models import DataflowSpec, Placement, TaskRecord


def deploy_levels(spec: DataflowSpec) -> list[list[str]]:
    """The two waves of a deployment: every task with inputs, then the sources.

    A task publishes only what it derives from its input, and input starts to flow
    only when the sources run; so once every task with inputs holds its channel
    session (acked), the sources may start, and no record is ever published to a
    channel nobody holds. Two waves, whatever the depth of the DAG.
    """
    has_inputs = {e.to for e in spec.edges}
    consumers = [t.id for t in spec.tasks if t.id in has_inputs]
    sources = [t.id for t in spec.tasks if t.id not in has_inputs]
    return [level for level in (consumers, sources) if level]


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
