"""Reading DAGs in the original ECHO format: lenient JSON, located problems, NiFi durations."""

from __future__ import annotations

from pathlib import Path

import pytest

from echo_master.legacy.nifi import parse_duration
from echo_master.legacy.parsing import read_dag
from echo_shared.errors import SpecError

DAGS = Path(__file__).parents[1] / "data" / "echo-dags"


def problems(body: bytes) -> dict[str, str]:
    with pytest.raises(SpecError) as e:
        read_dag(body)
    return {p.loc: p.msg for p in e.value.problems}


@pytest.mark.parametrize(("name", "count"), [("ETL.json", 7), ("TFDAG.json", 8), ("trivial.json", 2)])
def test_every_original_dag_parses(name: str, count: int) -> None:
    dag, _notes = read_dag((DAGS / name).read_bytes())
    assert len(dag.processors) == count
    assert dag.inputstreams == ["blah"] and dag.QOS == 1
    assert all(w.selectedRelationships for w in dag.wiring)


def test_etl_is_strict_json_and_keeps_its_properties_in_order() -> None:
    dag, notes = read_dag((DAGS / "ETL.json").read_bytes())
    assert not [n for n in notes if "repaired" in n]
    get_file = dag.processors[0]
    assert get_file.simple_class == "GetFile"
    assert get_file.properties["Input Directory"] == "/home/ETL"
    assert get_file.properties["Maximum File Age"] is None
    assert get_file.config == {"schedulingPeriod": "30 sec"}
    assert dag.processors[6].relationship("failure") is not None
    assert dag.processors[6].relationship("failure").autoTerminate is True  # type: ignore[union-attr]


def test_the_broken_quote_of_tfdag_is_repaired_and_noted() -> None:
    dag, notes = read_dag((DAGS / "TFDAG.json").read_bytes())
    log = dag.processors[7]
    assert log.simple_class == "LogAttribute"
    assert [(r.name, r.autoTerminate) for r in log.relationships] == [("failure", True), ("success", True)]
    assert log.sourceUuid == "1" and log.isInput
    assert any(n.startswith("repaired JSON") for n in notes)
    assert [(w.sourceProcessor, w.destinationProcessor) for w in dag.wiring][-1] == ("5", "7")


def test_comments_and_trailing_commas() -> None:
    body = b"""{
      // a line comment
      "processors": [
        {"name": "g", "class": "x.GetFile", "uuid": 7, /* a block comment */
         "properties": [{"Input Directory": "/data"}, {"Batch Size": 10},],
         "relationships": [{"name": "success", "autoTerminate": "false"},],
        },
      ],
      "wiring": [],
      "QOS": "1",
    }"""
    dag, notes = read_dag(body)
    p = dag.processors[0]
    assert p.uuid == "7" and p.properties == {"Input Directory": "/data", "Batch Size": "10"}
    assert p.relationships[0].autoTerminate is False
    assert dag.QOS == 1
    assert any("comment" in n for n in notes)


def test_properties_may_be_an_object_and_unknown_fields_are_noted() -> None:
    dag, notes = read_dag(
        b'{"processors": [{"class": "a.B", "uuid": "1", "properties": {"k": "v"}, "colour": "red"}],'
        b' "extra": 1}'
    )
    assert dag.processors[0].properties == {"k": "v"}
    assert "ignored unknown field 'extra'" in notes
    assert "processors[0]: ignored unknown field 'colour'" in notes


@pytest.mark.parametrize(
    "body",
    [
        b"",
        b"   ",
        b"garbage",
        b"<html>hello</html>",
        b"null",
        b'"a string"',
        b"[1, 2]",
        b"42",
        b"\xff\xfe\x00",
    ],
)
def test_garbage_is_a_problem_of_the_body(body: bytes) -> None:
    found = problems(body)
    assert list(found) == ["body"]


@pytest.mark.parametrize(
    ("body", "loc", "needle"),
    [
        (b'{"wiring": []}', "processors", "Field required"),
        (b'{"processors": []}', "processors", "at least 1"),
        (b'{"processors": [{"uuid": "1"}]}', "processors[0].class", "Field required"),
        (b'{"processors": [{"class": "a.B"}]}', "processors[0].uuid", "Field required"),
        (b'{"processors": [{"class": "", "uuid": "1"}]}', "processors[0].class", "at least 1"),
        (b'{"processors": {"class": "a.B"}}', "processors", "valid list"),
        (
            b'{"processors": [{"class": "a.B", "uuid": "1", "properties": [1]}]}',
            "processors[0].properties",
            "item 0",
        ),
        (
            b'{"processors": [{"class": "a.B", "uuid": "1", "properties": [{"k": [1]}]}]}',
            "processors[0].properties.k",
            "valid string",
        ),
        (
            b'{"processors": [{"class": "a.B", "uuid": "1", '
            b'"relationships": [{"name": "s", "autoTerminate": "maybe"}]}]}',
            "processors[0].relationships[0].autoTerminate",
            "boolean",
        ),
        (b'{"processors": [{"class": "a.B", "uuid": "1"}], "QOS": 5}', "QOS", "less than or equal to 2"),
        (
            b'{"processors": [{"class": "a.B", "uuid": "1"}], "wiring": [{"sourceProcessor": "1"}]}',
            "wiring[0].destinationProcessor",
            "Field required",
        ),
    ],
)
def test_shape_problems_are_located(body: bytes, loc: str, needle: str) -> None:
    found = problems(body)
    assert loc in found, found
    assert needle in found[loc]


def test_every_shape_problem_is_reported_at_once() -> None:
    found = problems(b'{"processors": [{"uuid": "1"}, {"class": "a.B"}], "QOS": -1}')
    assert {"processors[0].class", "processors[1].uuid", "QOS"} <= set(found)


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("30 sec", 30.0),
        ("5 min", 300.0),
        ("100 millis", 0.1),
        ("2 hours", 7200.0),
        ("1.5 s", 1.5),
        ("0 sec", 0.0),
        ("10secs", 10.0),
        ("1 day", 86400.0),
        ("250 MS", 0.25),
    ],
)
def test_nifi_durations(text: str, seconds: float) -> None:
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["soon", "30", "5 parsecs", "", "* * * * * ?", "-1 sec"])
def test_bad_durations_say_what_is_accepted(text: str) -> None:
    with pytest.raises(ValueError, match="not a time period") as e:
        parse_duration(text)
    assert repr(text) in str(e.value)
