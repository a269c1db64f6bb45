"""Building control commands from a dataflow's spec, placement and task records."""

from __future__ import annotations

import uuid
from collections.abc import Mapping

from echo_shared.messages import Binding, DeployTask, Reservation, StopTask, TaskSnapshot
from echo_shared.models import DataflowSpec, EdgeModel, Placement, TaskRecord


def deploy_levels(spec: DataflowSpec) -> list[list[str]]:
    """The waves of a deployment: one, every task at once.

    A producer may start before its consumer holds its channel session: what it publishes
    to nobody stays in its unconfirmed buffer, and the consumer announces itself (a
    progress report) as soon as it subscribed, upon which the producer sends it again.
    So no order is needed, and a deployment costs one round trip whatever the DAG's depth.
    """
    return [[t.id for t in spec.tasks]]


def deploy_command(
    df_id: str,
    spec: DataflowSpec,
    placement: Placement,
    task: TaskRecord,
    generations: Mapping[str, int] | None = None,
) -> DeployTask:
    """``generations``: task -> its current generation (the producers a consumer accepts)."""
    t = spec.task(task.id)
    gens = generations or {}
    topic = {(c.from_task, c.to_task): c.topic for c in placement.channels}
    edges = {(e.from_, e.to): e for e in spec.edges}

    def binding(src: str, dst: str, peer: str) -> Binding:
        e = edges[(src, dst)]
        return Binding(
            peer=peer,
            topic=topic[(src, dst)],
            model=e.model,
            batch=e.batch_limits if e.model is EdgeModel.batch else None,
            spool=e.spool,
            generation=gens.get(src) if peer == src else None,
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


def stop_command(
    df_id: str, task: TaskRecord, *, final: bool = True, delta_from: float | None = None
) -> StopTask:
    """``final``: the task is gone for good; otherwise it drains and snapshots to move
    (``delta_from``: only the changes since that checkpoint, which its target holds)."""
    return StopTask(
        cmd_id=uuid.uuid4().hex,
        dataflow=df_id,
        task=task.id,
        generation=task.generation,
        final=final,
        delta_from=delta_from,
    )


def add_reservation(total: dict[str, Reservation], device: str, cpu: float, memory_mb: int) -> None:
    r = total.setdefault(device, Reservation())
    r.cpu += cpu
    r.memory_mb += memory_mb
