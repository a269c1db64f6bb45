"""Submitting and stopping a dataflow: the steps ``/api/v1/dataflows`` and ``/DAG`` share.

Submit: validate with the scheduler over NATS, write the spec with desired state
``running`` (and any extra fields) in one Redis transaction before anything acts on it,
then kick the reconciler. Stop: desired state ``stopped``, kick, wait a little.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from echo_shared.errors import Problem, SpecError
from echo_shared.messages import ValidateReply, ValidateRequest
from echo_shared.models import DataflowSpec, DataflowState, DesiredState
from echo_shared.telemetry import inject, tracer

if TYPE_CHECKING:
    from .context import ApiContext
    from .store import Dataflow


async def validate(ctx: ApiContext, spec: DataflowSpec) -> None:
    """Ask the scheduler to validate the spec; ``SpecError`` with its problems if it is unsound."""
    reply = await ctx.bus.request(
        ctx.names.scheduler_validate,
        ValidateRequest(spec=spec),
        ValidateReply,
        timeout=ctx.settings.scheduler_timeout,
    )
    if not reply.ok:
        raise SpecError([Problem.of(p) for p in reply.problems])


async def submit(ctx: ApiContext, spec: DataflowSpec, extra: dict[str, str] | None = None) -> str:
    """Validate, store (desired ``running``) and kick a dataflow; returns its id.

    ``extra`` fields are written into the dataflow's hash beside the spec, atomically (the
    legacy API keeps the original processor uuids there).
    """
    with tracer("echo.master.api").start_as_current_span("submit dataflow") as span:
        span.set_attribute("echo.dataflow.name", spec.name)
        await validate(ctx, spec)
        df_id = await ctx.store.create(spec, traceparent=inject().get("traceparent", ""), extra=extra)
        span.set_attribute("echo.dataflow", df_id)
    await ctx.reconciler.wake(df_id)
    return df_id


async def stop(ctx: ApiContext, df_id: str) -> Dataflow:
    """Desired state ``stopped``, kick, and wait (``stop_wait``) for the tasks to stop."""
    await ctx.store.set_desired(df_id, DesiredState.stopped)
    await ctx.reconciler.wake(df_id)
    return await ctx.reconciler.wait_for(df_id, {DataflowState.stopped}, ctx.settings.stop_wait)
