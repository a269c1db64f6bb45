"""Building control commands from a dataflow's spec, placement and task records."""

from __future__ import annotations

import uuid

from echo_shared.messages import Binding, DeployTask, Reservation, StopTask, TaskSnapshot
from echo_shared.models import DataflowSpec, EdgeModel, Placement, TaskRecord


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
    edges = {(e.from_, e.to): e for e in spec.edges}

    def binding(src: str, dst: str, peer: str) -> Binding:
        e = edges[(src, dst)]
        return Binding(
            peer=peer,
            topic=topic[(src, dst)],
            model=e.model,
            batch=e.batch_limits if e.model is EdgeModel.batch else None,
        )

    return DeployTask(
        cmd_id=uuid.uuid4().hex,
        dataflow=df_id,
        task=t.id,
        generation=task.generation,
        operator=t.operator,
        config=t.config,
        resources=t.resources,
        inputs=[binding(src, t.id, src) for src in spec.inputs_of(t.id)],
        outputs=[binding(t.id, dst, dst) for dst in spec.outputs_of(t.id)],
        restore=TaskSnapshot.model_validate(task.restore) if task.restore else None,
    )


def stop_command(df_id: str, task: TaskRecord, *, final: bool = True) -> StopTask:
    """``final``: the task is gone for good; otherwise it drains and snapshots to move."""
    return StopTask(
        cmd_id=uuid.uuid4().hex, dataflow=df_id, task=task.id, generation=task.generation, final=final
    )


def add_reservation(total: dict[str, Reservation], device: str, cpu: float, memory_mb: int) -> None:
    r = total.setdefault(device, Reservation())
    r.cpu += cpu
    r.memory_mb += memory_mb
