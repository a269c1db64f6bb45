"""Small DAGs in the original ECHO format, mapped to dataflow specs; the originals on disk.

Shared by the ``test_legacy_mapping*.py`` modules.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson
import pytest

from echo_master.legacy.mapping import Mapped, map_dag
from echo_master.legacy.parsing import read_dag
from echo_shared.errors import Problem, SpecError
from echo_shared.models import EdgeSpec

DAGS = Path(__file__).parents[1] / "data" / "echo-dags"


def proc(
    cls: str,
    uuid: str,
    props: dict[str, Any] | None = None,
    rels: tuple[str, ...] = ("success",),
    terminated: tuple[str, ...] = (),
    **extra: Any,
) -> dict[str, Any]:
    return {
        "name": cls,
        "class": f"org.example.{cls}",
        "uuid": uuid,
        "relationships": [{"name": r, "autoTerminate": r in terminated} for r in rels],
        "properties": [{k: v} for k, v in (props or {}).items()],
        **extra,
    }


def wire(a: str, b: str, *rels: str) -> dict[str, Any]:
    return {
        "sourceProcessor": a,
        "destinationProcessor": b,
        "selectedRelationships": list(rels or ["success"]),
    }


def mapped(*processors: dict[str, Any], wiring: tuple[dict[str, Any], ...] = (), **top: Any) -> Mapped:
    dag, notes = read_dag(orjson.dumps({"processors": list(processors), "wiring": list(wiring), **top}))
    return map_dag(dag, notes=notes)


def fails(*processors: dict[str, Any], wiring: tuple[dict[str, Any], ...] = (), **top: Any) -> list[Problem]:
    with pytest.raises(SpecError) as e:
        mapped(*processors, wiring=wiring, **top)
    return e.value.problems


def task(m: Mapped, tid: str) -> dict[str, Any]:
    t = m.spec.task(tid)
    return {"operator": t.operator, "config": t.config}


def edges(m: Mapped) -> set[tuple[str, str, str]]:
    return {(e.from_, e.to, e.model.value) for e in m.spec.edges}


def edge(m: Mapped, a: str, b: str) -> EdgeSpec:
    return next(e for e in m.spec.edges if (e.from_, e.to) == (a, b))


def original(name: str) -> Mapped:
    dag, notes = read_dag((DAGS / name).read_bytes())
    return map_dag(dag, notes=notes)


SOURCE = proc("GetFile", "0", {"Input Directory": "/data", "File Filter": "in.csv"})

FILES = proc("GetFileBatch", "0", {"Input Directory": "/in"})
