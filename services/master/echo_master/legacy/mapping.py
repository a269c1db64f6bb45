"""An original ECHO DAG (``parsing.DagDocument``) as an ECHO ``DataflowSpec``.

Each processor becomes a chain of tasks (``processors.BUILDERS``); wiring becomes edges.

* **Relationships.** A wiring entry gives an edge when one of its selected relationships
  is declared by the source processor, is not ``autoTerminate: true`` and carries the
  processor's output (``success``; ``splits`` for SplitText). Everything else gives no
  edge and a note. In particular ``failure`` relationships: ECHO has no error routing —
  an operator that fails on its input fails its task (state ``failed`` with the reason),
  and the dataflow reports it — so a ``failure`` connection is dropped with a note.
* **Sinks with successors.** NiFi's PutFile, PublishMQTT, LogAttribute pass the flowfile on
  after writing it. In ECHO a sink has no output, so the successors of such a processor
  are fed by its own producers (the same data, in parallel with the write).
* **Edge models** follow from the kinds of the two ends: files travel on ``file`` edges,
  records on ``stream`` edges, or on ``batch`` edges when a ``*Batch`` processor at either
  end has a ``Batch Size`` (its count; ``Batch Duration`` its seconds). Files arriving at
  a processor that takes records pass through an inserted ``core.split_lines`` task
  (``<task>-lines``): one record per line of the file.
* **Placement.** ``isInput: true`` pins every task of the processor to the device hosting
  the input stream ``sourceUuid`` (``placement.input_stream``). Without ``sourceUuid``, the
  DAG's ``inputstreams`` decides if it names exactly one stream; otherwise it is a 422.
  ``sourceUuid`` without ``isInput`` is ignored (as the original did), with a note.
* **QOS** (0, 1, 2) is recorded. ECHO channels always use MQTT QoS 1 with deduplication by
  record id, so every record reaches each sink exactly once: at least what any QOS asks.
* **Task ids** are ``<name>-<uuid>`` in lower case (``getfile-0``, ``edgentfilter_rbi-2-range``).
"""

from __future__ import annotations

import graphlib
import itertools
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from pydantic import ValidationError

from echo_shared.errors import Problem, SpecError
from echo_shared.models import BatchSpec, DataflowSpec, EdgeModel
from echo_shared.operators import Kind, join_loc

from .drafts import Built, Draft, Env
from .nifi import NIFI_DEFAULTS
from .parsing import DagDocument, ProcessorDoc
from .processors import BUILDERS, OUTPUTS, Builder

R, F = Kind.records, Kind.files
IGNORED_PROPERTIES = {"Experiment Log File"}  # the original's instrumentation


@dataclass
class ProcessorMapping:
    uuid: str
    name: str
    class_: str
    tasks: list[str]

    def as_dict(self) -> dict[str, Any]:
        return {"uuid": self.uuid, "name": self.name, "class": self.class_, "tasks": self.tasks}


@dataclass
class Mapped:
    spec: DataflowSpec
    processors: list[ProcessorMapping]
    notes: list[str]
    qos: int | None = None
    inputstreams: list[str] = field(default_factory=list)
    task_origin: dict[str, int] = field(default_factory=dict)  # task id -> processor index
    edge_origin: dict[int, int] = field(default_factory=dict)  # spec edge index -> wiring index

    def legacy_record(self) -> dict[str, Any]:
        """What is stored beside the dataflow for ``GET /DAG``."""
        return {
            "processors": [p.as_dict() for p in self.processors],
            "notes": self.notes,
            "qos": self.qos,
            "inputstreams": self.inputstreams,
        }


def slug(text: str) -> str:
    out = re.sub(r"[^a-z0-9_-]+", "-", text.lower()).strip("-_")
    return out or "p"


@dataclass
class _Piece:
    index: int
    base: str
    built: Built

    def task_id(self, d: Draft) -> str:
        return f"{self.base}-{d.suffix}" if d.suffix else self.base

    @property
    def entry(self) -> Draft | None:
        return self.built.drafts[0] if self.built.drafts else None

    @property
    def exit(self) -> Draft | None:
        return self.built.drafts[-1] if self.built.drafts else None


class _Graph:
    """Builds the spec; collects problems and notes."""

    def __init__(self, dag: DagDocument, builders: Mapping[str, Builder]) -> None:
        self.dag = dag
        self.builders = builders
        self.problems: list[Problem] = []
        self.notes: list[str] = []
        self.by_uuid: dict[str, int] = {}
        self.succ: dict[int, list[tuple[int, int]]] = {}  # proc -> [(successor, wiring index)]
        self.pred: dict[int, list[tuple[int, int]]] = {}
        self.pieces: dict[int, _Piece] = {}
        self.tasks: list[dict[str, Any]] = []
        self.edges: list[dict[str, Any]] = []
        self.edge_origin: dict[int, int] = {}
        self.task_origin: dict[str, int] = {}
        self.adapters: dict[int, str] = {}
        self.streams: dict[int, str] = {}

    # --------------------------------------------------------------------- processors

    def index_processors(self) -> None:
        unknown: list[str] = []
        for i, p in enumerate(self.dag.processors):
            if p.uuid in self.by_uuid:
                first = self.by_uuid[p.uuid]
                self.problems.append(
                    Problem(f"processors[{i}].uuid", f"duplicate uuid {p.uuid!r} (also processors[{first}])")
                )
            else:
                self.by_uuid[p.uuid] = i
            if p.simple_class not in self.builders:
                unknown.append(f"{p.class_!r} ({p.label})")
                self.problems.append(
                    Problem(
                        f"processors[{i}].class",
                        f"unknown processor class {p.class_!r} of {p.label}; known classes: "
                        + ", ".join(sorted(self.builders))
                        + " (map more in an ECHO_LEGACY_CLASS_MAP file)",
                        "unknown_class",
                    )
                )
        if len(unknown) > 1:
            self.problems.insert(
                0,
                Problem(
                    "processors", f"{len(unknown)} unknown classes: " + "; ".join(unknown), "unknown_class"
                ),
            )

    def wire(self) -> None:
        for k, w in enumerate(self.dag.wiring):
            ends = []
            for end, uuid in (
                ("sourceProcessor", w.sourceProcessor),
                ("destinationProcessor", w.destinationProcessor),
            ):
                if uuid not in self.by_uuid:
                    self.problems.append(Problem(f"wiring[{k}].{end}", f"no processor with uuid {uuid!r}"))
                ends.append(self.by_uuid.get(uuid))
            src, dst = ends
            if src is None or dst is None:
                continue
            if src == dst:
                self.problems.append(
                    Problem(f"wiring[{k}]", f"processor uuid {w.sourceProcessor!r} is wired to itself")
                )
                continue
            if self._carries_output(k, self.dag.processors[src], w.selectedRelationships):
                if any(s == dst for s, _ in self.succ.get(src, [])):
                    self.notes.append(f"wiring[{k}]: duplicate of an earlier connection, merged")
                    continue
                self.succ.setdefault(src, []).append((dst, k))
                self.pred.setdefault(dst, []).append((src, k))

    def _carries_output(self, k: int, src: ProcessorDoc, selected: list[str]) -> bool:
        outputs = OUTPUTS.get(src.simple_class, {"success"})
        live = False
        for name in selected:
            rel = src.relationship(name)
            if rel is None:
                self.notes.append(
                    f"wiring[{k}]: {src.label} declares no relationship {name!r}: no edge for it"
                )
            elif rel.autoTerminate:
                self.notes.append(
                    f"wiring[{k}]: relationship {name!r} of {src.label} is auto-terminated: no edge"
                )
            elif name not in outputs:
                why = (
                    "ECHO has no failure routing: an operator that fails fails its task"
                    if name == "failure"
                    else f"it does not carry the output of {src.simple_class}"
                )
                self.notes.append(f"wiring[{k}]: relationship {name!r} of {src.label} dropped ({why})")
            else:
                live = True
        if not selected:
            self.notes.append(f"wiring[{k}]: no selectedRelationships: no edge")
        return live

    def order(self) -> list[int]:
        ts: graphlib.TopologicalSorter[int] = graphlib.TopologicalSorter()
        for i in range(len(self.dag.processors)):
            ts.add(i, *[s for s, _ in self.pred.get(i, [])])
        try:
            return list(ts.static_order())
        except graphlib.CycleError as e:
            cycle = [self.dag.processors[i].uuid for i in e.args[1]]
            self.problems.append(
                Problem("wiring", "the DAG has a cycle: uuid " + " -> ".join(cycle), "cycle")
            )
            return []

    # ------------------------------------------------------------------------ building

    def build(self, order: list[int]) -> None:
        used_ids: set[str] = set()
        for i in order:
            p = self.dag.processors[i]
            base = slug(f"{p.name or p.simple_class}")[:40].rstrip("-_") + "-" + slug(p.uuid)[:20]
            base = base[:56].rstrip("-_") or "p"
            n, unique = 2, base
            while unique in used_ids:
                unique, n = f"{base}-{n}", n + 1
            used_ids.add(unique)
            inputs = {kind for _, kind in self.producers_into(i)}
            env = Env(
                i,
                p,
                unique,
                inputs,
                successors=[self.dag.processors[s].simple_class for s, _ in self.succ.get(i, [])],
                predecessors=[self.dag.processors[s].simple_class for s, _ in self.pred.get(i, [])],
            )
            built = self.builders[p.simple_class](env)
            self.problems += env.problems
            self.notes += env.notes
            ignored = [
                k
                for k, v in p.properties.items()
                if v is not None
                and k not in env.used
                and k not in IGNORED_PROPERTIES
                and NIFI_DEFAULTS.get(k) != v.strip()
            ]
            if ignored:
                self.notes.append(f"processors[{i}] {p.label}: properties without effect in ECHO: {ignored}")
            if built.drafts and built.drafts[-1].produces is None and self.succ.get(i):
                self.notes.append(
                    f"processors[{i}] {p.label}: a sink in ECHO; its successors receive what it receives"
                )
            self.pieces[i] = _Piece(i, unique, built)

    def producers_into(self, i: int) -> list[tuple[str, Kind]]:
        """(task id, kind) of everything that feeds processor ``i``: its predecessors' last
        tasks, or for a predecessor that is a sink, whatever feeds that one (recursively)."""
        out: list[tuple[str, Kind]] = []
        for s, _ in self.pred.get(i, []):
            out += self.outputs_of(s)
        return out

    def outputs_of(self, s: int) -> list[tuple[str, Kind]]:
        piece = self.pieces.get(s)
        if piece is None:
            return []
        last = piece.exit
        if last is not None and last.produces is not None:
            return [(piece.task_id(last), last.produces)]
        return self.producers_into(s)  # a sink, or no task: its successors get its input

    def placement(self, i: int, d: Draft) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if d.tier is not None:
            out["tier"] = d.tier.value
        stream = self.streams.get(i)
        if stream is not None:
            out["input_stream"] = stream
        return out

    def pin_inputs(self) -> None:
        """The input stream each ``isInput`` processor is pinned to."""
        for i, p in enumerate(self.dag.processors):
            if not p.isInput:
                if p.sourceUuid is not None:
                    self.notes.append(f"processors[{i}] {p.label}: sourceUuid without isInput: not pinned")
                continue
            if p.sourceUuid is not None:
                self.streams[i] = p.sourceUuid
            elif len(self.dag.inputstreams) == 1:
                self.streams[i] = self.dag.inputstreams[0]
                self.notes.append(
                    f"processors[{i}] {p.label}: isInput without sourceUuid: pinned to the DAG's only "
                    f"input stream {self.dag.inputstreams[0]!r}"
                )
            else:
                self.problems.append(
                    Problem(
                        f"processors[{i}].sourceUuid",
                        f"{p.label} is an input (isInput: true) but names no sourceUuid, and the DAG's "
                        f"inputstreams {self.dag.inputstreams} do not name exactly one stream",
                        "missing",
                    )
                )

    def emit(self) -> None:
        for i, piece in sorted(self.pieces.items()):
            for d in piece.built.drafts:
                tid = piece.task_id(d)
                self.task_origin[tid] = i
                self.tasks.append(
                    {"id": tid, "operator": d.operator, "config": d.config, "placement": self.placement(i, d)}
                )
            for a, b in itertools.pairwise(piece.built.drafts):
                self.add_edge(piece.task_id(a), piece.task_id(b), a.produces or R, None)
        seen: set[tuple[str, str]] = {(e["from"], e["to"]) for e in self.edges}
        for i, piece in sorted(self.pieces.items()):
            entry = piece.entry
            if entry is None:
                continue
            for s, k in self.pred.get(i, []):
                if entry.consumes is None:
                    p = self.dag.processors[i]
                    msg = f"{p.label} is a source ({p.simple_class}) and takes no input"
                    self.problems.append(Problem(f"wiring[{k}].destinationProcessor", msg, "role"))
                    continue
                for from_id, kind in self.outputs_of(s):
                    self.connect(k, s, from_id, kind, i, piece, entry, seen)

    def connect(
        self,
        k: int,
        s: int,
        from_id: str,
        kind: Kind,
        i: int,
        piece: _Piece,
        entry: Draft,
        seen: set[tuple[str, str]],
    ) -> None:
        to_id, consumes = piece.task_id(entry), entry.consumes
        if kind is F and consumes is R:
            adapter = self.adapters.get(i)
            if adapter is None:
                adapter = self.adapters[i] = f"{piece.base}-lines"
                self.task_origin[adapter] = i
                entry_placement = self.placement(i, entry)
                self.tasks.append(
                    {
                        "id": adapter,
                        "operator": "core.split_lines",
                        "config": {},
                        "placement": entry_placement,
                    }
                )
                self.add_edge(adapter, to_id, R, None)
                self.notes.append(
                    f"processors[{i}] {self.dag.processors[i].label} takes records but receives files: "
                    f"task {adapter!r} splits them into lines"
                )
            to_id, consumes = adapter, F
        if kind is R and consumes is F:
            self.problems.append(
                Problem(
                    f"wiring[{k}]",
                    f"{self.dag.processors[i].label} takes files but {self.dag.processors[s].label} "
                    f"produces records",
                    "pairing",
                )
            )
            return
        if (from_id, to_id) in seen:
            return
        seen.add((from_id, to_id))
        self.add_edge(from_id, to_id, kind, k, self.batch_of(s, i) if kind is R else None)

    def batch_of(self, s: int, i: int) -> BatchSpec | None:
        for end in (i, s):
            piece = self.pieces.get(end)
            if piece and piece.built.batch_count:
                return BatchSpec(count=piece.built.batch_count, seconds=piece.built.batch_seconds or 1.0)
        return None

    def add_edge(self, a: str, b: str, kind: Kind, wire: int | None, batch: BatchSpec | None = None) -> None:
        edge: dict[str, Any] = {"from": a, "to": b}
        if kind is F:
            edge["model"] = EdgeModel.file.value
        elif batch is not None:
            edge["model"] = EdgeModel.batch.value
            edge["batch"] = batch.model_dump()
        if wire is not None:
            self.edge_origin[len(self.edges)] = wire
        self.edges.append(edge)


def map_dag(
    dag: DagDocument,
    name: str | None = None,
    notes: list[str] | None = None,
    classes: Mapping[str, Builder] | None = None,
) -> Mapped:
    """Map a parsed DAG; raises ``SpecError`` with every problem found. ``classes``: the
    builders of an ``ECHO_LEGACY_CLASS_MAP`` file, before ECHO's own."""
    g = _Graph(dag, {**BUILDERS, **(classes or {})})
    g.notes += notes or []
    g.index_processors()
    g.wire()
    g.pin_inputs()
    if g.problems:
        raise SpecError(g.problems)
    order = g.order()
    if g.problems:
        raise SpecError(g.problems)
    g.build(order)
    g.emit()
    if g.problems:
        raise SpecError(g.problems)
    first = dag.processors[0]
    spec_name = name or ("dag-" + slug(first.name or first.simple_class))[:64].rstrip("-_")
    try:
        spec = DataflowSpec.model_validate({"name": spec_name, "tasks": g.tasks, "edges": g.edges})
    except ValidationError as e:
        raise SpecError(
            [Problem(join_loc("", err["loc"]) or "body", err["msg"], err["type"]) for err in e.errors()]
        ) from e
    processors = [
        ProcessorMapping(
            p.uuid,
            p.name,
            p.class_,
            [tid for tid, origin in g.task_origin.items() if origin == i],
        )
        for i, p in enumerate(dag.processors)
    ]
    return Mapped(spec, processors, g.notes, dag.QOS, list(dag.inputstreams), g.task_origin, g.edge_origin)
