"""The original ECHO REST API (``/DAG``) on top of ECHO dataflows.

- ``POST /DAG``: body a DAG in the original format, parsed leniently -> ``200 {"uuid":
  <dataflow id>}``; a bad DAG -> ``422`` naming each problem (``processors[3].class``);
- ``POST /DAG/stop?uuid=``: stops it (as ``DELETE /api/v1/dataflows/{id}``) -> ``200
  {"uuid", "state"}`` (``stopped``, or ``stopping`` if devices have not all confirmed);
- ``POST /DAG/rebalance?uuid=``: re-places it -> ``200 {"uuid", "moved": [task ids]}``, or
  ``409`` when the dataflow is not running;
- ``GET /DAG?uuid=``: the dataflow (as ``GET /api/v1/dataflows/{id}``) plus ``processors``
  (each original processor's uuid, name, class and the ids of its tasks), the ``notes`` of
  the mapping, ``qos`` and ``inputstreams``.

The uuid of the original API is the dataflow id; an unknown uuid is a ``404``. The
dataflow is created as ``POST /api/v1/dataflows`` creates one (``submitting.py``); the
original processors are kept in the dataflow's Redis hash (field ``legacy``). A problem
the scheduler finds in the mapped spec (``tasks[4].config.url``) is reported at the
processor it comes from (``processors[6]``, naming the task). How processors become tasks
is in ``mapping.py`` and ``processors.py``.
"""

from __future__ import annotations

import re
from typing import Any

import orjson
from fastapi import APIRouter, Query, Request
from pydantic import BaseModel, Field

from echo_shared.errors import Problem, SpecError

from .. import submitting
from ..audit import audit_target
from ..body_limit import read_body
from ..context import ApiContext
from ..migrations_api import start_rebalance, wait_migrations
from ..views import ERRORS, DataflowView, dataflow_view
from .classmap import load_class_map
from .mapping import Mapped, map_dag
from .parsing import read_dag

LEGACY_FIELD = "legacy"  # the dataflow hash field holding the original processors

DAG_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {
                "schema": {
                    "type": "object",
                    "description": "processors[] (name, class, uuid, relationships, properties, config, "
                    "isInput, sourceUuid), wiring[] (sourceProcessor, destinationProcessor, "
                    "selectedRelationships), inputstreams, QOS; comments and trailing commas are accepted",
                }
            }
        },
    }
}


class DagCreated(BaseModel):
    uuid: str = Field(description="the id of the new dataflow")


class DagStopped(BaseModel):
    uuid: str
    state: str = Field(description="stopped, or stopping if the devices have not all confirmed yet")


class DagRebalanced(BaseModel):
    uuid: str
    moved: list[str] = Field(description="tasks placed on another device")


class ProcessorView(BaseModel):
    model_config = {"populate_by_name": True}

    uuid: str
    name: str
    class_: str = Field(alias="class")
    tasks: list[str]


class DagView(DataflowView):
    uuid: str
    processors: list[ProcessorView] = Field(default_factory=list)
    notes: list[str] = Field(default_factory=list)
    qos: int | None = None
    inputstreams: list[str] = Field(default_factory=list)


def locate(problems: list[Problem], mapped: Mapped) -> list[Problem]:
    """Problems found in the mapped spec (``tasks[3].config.path``) located in the DAG."""
    out = []
    for p in problems:
        m = re.match(r"^(tasks|edges)\[(\d+)\](.*)$", p.loc)
        where, msg = None, p.msg
        if m and m.group(1) == "tasks":
            idx = int(m.group(2))
            if idx < len(mapped.spec.tasks):
                task = mapped.spec.tasks[idx]
                proc = mapped.task_origin.get(task.id)
                if proc is not None:
                    where = f"processors[{proc}]"
                    msg = f"task {task.id!r} ({task.operator}){m.group(3)}: {p.msg}"
        elif m:
            wire = mapped.edge_origin.get(int(m.group(2)))
            if wire is not None:
                where, msg = f"wiring[{wire}]", f"edge{m.group(3)}: {p.msg}"
        out.append(Problem(where, msg, p.type) if where else p)
    return out


REBALANCE_WAIT = 60.0  # seconds: the original API answered once the DAG ran again
UUID = Query(description="the dataflow id returned by POST /DAG", min_length=1, max_length=128)


def legacy_router(ctx: ApiContext) -> APIRouter:
    router = APIRouter(prefix="/DAG", tags=["original ECHO API"])
    path = ctx.settings.legacy_class_map
    classes = load_class_map(path) if path is not None else {}

    @router.post(
        "",
        response_model=DagCreated,
        responses=ERRORS,
        openapi_extra=DAG_BODY,
        summary="Submit a DAG in the original ECHO format",
    )
    async def submit_dag(
        request: Request,
        name: str | None = Query(
            default=None, description="name of the dataflow (default: dag-<first processor>)"
        ),
    ) -> DagCreated:
        body = await read_body(request, ctx.settings.max_body_bytes)
        dag, notes = read_dag(body)
        mapped = map_dag(dag, name, notes, classes)
        extra = {LEGACY_FIELD: orjson.dumps(mapped.legacy_record()).decode()}
        try:
            df_id = await submitting.submit(ctx, mapped.spec, extra)
        except SpecError as e:
            raise SpecError(locate(e.problems, mapped)) from e
        audit_target(request, dataflow=df_id)
        return DagCreated(uuid=df_id)

    @router.post("/stop", response_model=DagStopped, responses=ERRORS, summary="Stop a DAG")
    async def stop_dag(request: Request, uuid: str = UUID) -> DagStopped:
        audit_target(request, dataflow=uuid)
        df = await submitting.stop(ctx, uuid)
        return DagStopped(uuid=df.id, state=df.state.value)

    @router.post(
        "/rebalance",
        response_model=DagRebalanced,
        responses=ERRORS,
        summary="Re-place a DAG's tasks (the migrator's rebalance; answers once the moves ended)",
    )
    async def rebalance_dag(request: Request, uuid: str = UUID) -> DagRebalanced:
        audit_target(request, dataflow=uuid)
        reply = await start_rebalance(ctx, uuid, origin="legacy")
        done = await wait_migrations(ctx, reply.migrations, REBALANCE_WAIT)
        moved = [m.task for m in done if m.state == "completed"]
        return DagRebalanced(uuid=uuid, moved=moved)

    @router.get("", response_model=DagView, responses=ERRORS, summary="A DAG and its processors' tasks")
    async def get_dag(uuid: str = UUID) -> dict[str, Any]:
        df = await ctx.store.get(uuid)
        view = dataflow_view(df).model_dump(mode="json", by_alias=True)
        legacy = orjson.loads(df.raw[LEGACY_FIELD]) if df.raw.get(LEGACY_FIELD) else {}
        return {
            **view,
            "uuid": df.id,
            "processors": legacy.get("processors", []),
            "notes": legacy.get("notes", []),
            "qos": legacy.get("qos"),
            "inputstreams": legacy.get("inputstreams", []),
        }

    return router
