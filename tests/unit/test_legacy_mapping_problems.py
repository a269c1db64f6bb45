"""Original ECHO DAGs as ECHO dataflow specs: problems, located in the DAG as it was written."""

from __future__ import annotations

from typing import Any

import pytest

from echo_master.legacy.routes import locate
from echo_shared.errors import Problem
from tests.unit.legacy_dags import FILES, SOURCE, fails, mapped, original, proc, wire

# ------------------------------------------------------------------------------------ problems


def test_every_unknown_class_is_listed_at_once() -> None:
    found = fails(
        SOURCE,
        proc("ConvertRecord", "1"),
        proc("SenMLParser", "2"),
        {**proc("PutHDFS", "a-3"), "name": "to hdfs"},
        wiring=(wire("0", "1"), wire("1", "2"), wire("2", "a-3")),
    )
    by_loc = {p.loc: p.msg for p in found}
    assert set(by_loc) == {"processors", "processors[1].class", "processors[3].class"}
    assert (
        "org.example.ConvertRecord" in by_loc["processors[1].class"]
        and "uuid 1" in by_loc["processors[1].class"]
    )
    assert "'to hdfs' (uuid a-3)" in by_loc["processors[3].class"]
    assert "2 unknown classes" in by_loc["processors"]
    assert "ConvertRecord" in by_loc["processors"] and "PutHDFS" in by_loc["processors"]


def test_missing_required_properties_are_located() -> None:
    found = {
        p.loc: p.msg for p in fails(proc("GetFile", "0"), proc("JoinETL", "1"), wiring=(wire("0", "1"),))
    }
    assert "'Input Directory'" in found["processors[0].properties.Input Directory"]
    assert "'Join Schema File Path'" in found["processors[1].properties.Join Schema File Path"]


@pytest.mark.parametrize(
    ("processors", "wiring", "loc", "needle"),
    [
        ([SOURCE], [wire("0", "9")], "wiring[0].destinationProcessor", "no processor with uuid '9'"),
        ([SOURCE, proc("SenMLParser", "0")], [], "processors[1].uuid", "duplicate uuid '0'"),
        ([SOURCE], [wire("0", "0")], "wiring[0]", "wired to itself"),
        (
            [SOURCE, proc("SenMLParser", "1"), proc("Interpolation", "2")],
            [wire("0", "1"), wire("1", "2"), wire("2", "1")],
            "wiring",
            "cycle",
        ),
        (
            [SOURCE, proc("GetFile", "1", {"Input Directory": "/x", "File Filter": "y"})],
            [wire("0", "1")],
            "wiring[0].destinationProcessor",
            "is a source",
        ),
        (
            [
                SOURCE,
                proc(
                    "PublishMQTT",
                    "1",
                    {"Broker URI": "tcp://h:1", "Topic": "t", "Quality of Service(QoS)": "3"},
                ),
            ],
            [wire("0", "1")],
            "processors[1].properties.Quality of Service(QoS)",
            "0, 1 or 2",
        ),
        (
            [SOURCE, proc("UpdateAttribute", "1", {"Delete Attributes Expression": "tmp.*"})],
            [wire("0", "1")],
            "processors[1].properties.Delete Attributes Expression",
            "not a regular expression",
        ),
        (
            [FILES, proc("PutFile", "1", {"Directory": "/o", "Conflict Resolution Strategy": "rename"})],
            [wire("0", "1")],
            "processors[1].properties.Conflict Resolution Strategy",
            "replace, ignore or fail",
        ),
        (
            [SOURCE, proc("JoinETL", "1", {"Join Schema File Path": "/s"}), proc("JoinFiles", "2")],
            [wire("0", "1"), wire("1", "2"), wire("0", "2")],
            "",
            "",
        ),
    ],
)
def test_graph_problems_are_located(
    processors: list[dict[str, Any]], wiring: list[dict[str, Any]], loc: str, needle: str
) -> None:
    if not loc:  # a well-formed control case: fan-in is fine
        assert mapped(*processors, wiring=tuple(wiring)).spec.edges
        return
    found = {p.loc: p.msg for p in fails(*processors, wiring=tuple(wiring))}
    assert loc in found, found
    assert needle in found[loc]


def test_scheduler_problems_are_located_in_the_dag() -> None:
    m = original("ETL.json")
    index = [t.id for t in m.spec.tasks].index("edgentfilter_rbi-2-bloom")
    located = locate(
        [
            Problem(f"tasks[{index}].config.ids_file", "bad path", "value_error"),
            Problem("edges[0].model", "wrong model", "pairing"),
            Problem("name", "odd", "value_error"),
        ],
        m,
    )
    assert located[0].loc == "processors[2]"
    assert "edgentfilter_rbi-2-bloom" in located[0].msg and ".config.ids_file: bad path" in located[0].msg
    first_wired = next(i for i, e in enumerate(m.spec.edges) if i in m.edge_origin)
    assert first_wired == 2  # the two internal edges of EdgentFilter_RBI come first and have no wiring
    assert located[1].loc == "edges[0].model"  # an internal edge stays as it is
    assert located[2].loc == "name"
