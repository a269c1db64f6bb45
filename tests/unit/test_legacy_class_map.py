"""More processor classes without code changes (``ECHO_LEGACY_CLASS_MAP``), RIoTBench's own
source (ETLGetFile) in its package spellings, and the unknown-class 422 that lists them all."""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest

from echo_master.legacy.classmap import ClassMapError, load_class_map
from echo_master.legacy.mapping import map_dag
from echo_master.legacy.parsing import read_dag
from echo_shared.errors import SpecError
from echo_shared.operators import config_problems, lookup
from tests.harness.specs import riotbench_spelling
from tests.unit.legacy_dags import DAGS, SOURCE, fails, proc, task, wire

CLASS_MAP = """
# a site's own processors
com.acme.nifi.TemperatureAlert:
  operator: core.filter
  config: {where: "temperature > ${Threshold}"}
  tier: fog
org.acme.TableOut:
  operator: io.file_sink
  config: {path: "${Directory}/out.jsonl"}
"""


def class_map(tmp_path: Path, text: str = CLASS_MAP, name: str = "classes.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def mapped_with(path: Path, *processors: dict[str, object], wiring: tuple[dict[str, object], ...] = ()):  # type: ignore[no-untyped-def]
    dag, notes = read_dag(orjson.dumps({"processors": list(processors), "wiring": list(wiring)}))
    return map_dag(dag, notes=notes, classes=load_class_map(path))


def test_a_mapped_class_becomes_its_operator_with_the_processors_properties(tmp_path: Path) -> None:
    path = class_map(tmp_path)
    m = mapped_with(
        path,
        SOURCE,
        proc("TemperatureAlert", "1", {"Threshold": "30"}),
        proc("TableOut", "2", {"Directory": "/var/out"}),
        wiring=(wire("0", "1"), wire("1", "2")),
    )
    assert task(m, "temperaturealert-1") == {
        "operator": "core.filter",
        "config": {"where": "temperature > 30"},
    }
    assert m.spec.task("temperaturealert-1").placement.tiers()[0].value == "fog"
    assert task(m, "tableout-2") == {"operator": "io.file_sink", "config": {"path": "/var/out/out.jsonl"}}


def test_a_missing_property_of_a_mapped_class_is_a_located_problem(tmp_path: Path) -> None:
    dag, notes = read_dag(
        orjson.dumps({"processors": [SOURCE, proc("TemperatureAlert", "1")], "wiring": [wire("0", "1")]})
    )
    with pytest.raises(SpecError) as e:
        map_dag(dag, notes=notes, classes=load_class_map(class_map(tmp_path)))
    found = {p.loc: p.msg for p in e.value.problems}
    assert "Threshold" in found["processors[1].properties.Threshold"]


def test_a_mapped_config_is_checked_like_any_tasks(tmp_path: Path) -> None:
    """The operator's config is checked where every task's is (at submission: a 422 located
    in the DAG, ``tests/e2e/test_legacy_api.py``): here, the problems it would get."""
    path = class_map(tmp_path, '{"x.Bad": {"operator": "io.file_sink", "config": {"nope": 1}}}', "m.json")
    m = mapped_with(path, SOURCE, proc("Bad", "1"), wiring=(wire("0", "1"),))
    t = m.spec.task("bad-1")
    info = lookup(t.operator)
    assert info is not None
    found = {p.loc: p.msg for p in config_problems(info, t.config, "config")}
    assert found.keys() == {"config.path", "config.nope"}, found


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("- a list", "expected a mapping of class names"),
        ("{x.A: {operator: no.such}}", "no operator 'no.such'"),
        ("{x.A: {operator: core.filter, extra: 1}}", "extra: Extra inputs are not permitted"),
        ("{x.A: {operator: core.passthrough}, y.A: {operator: core.filter}}", "maps A differently"),
        ("{x.A: {operator: core.passthrough, tier: moon}}", "tier"),
        ("{x.A: [unclosed", "not valid JSON or YAML"),
    ],
)
def test_a_bad_class_map_is_refused_naming_the_file_and_entry(
    tmp_path: Path, text: str, problem: str
) -> None:
    path = class_map(tmp_path, text)
    with pytest.raises(ClassMapError, match=problem) as e:
        load_class_map(path)
    assert str(path) in str(e.value)


def test_an_unreadable_class_map_says_so(tmp_path: Path) -> None:
    with pytest.raises(ClassMapError, match="cannot be read"):
        load_class_map(tmp_path / "absent.yaml")


@pytest.mark.parametrize(
    "cls",
    ["in.dream_lab.nifi.etl.processors.ETLGetFile", "in.dreamlab.processors.ETLGetFile", "ETLGetFile"],
)
def test_etl_get_file_reads_its_file_in_any_package_spelling(cls: str) -> None:
    src = {**proc("ETLGetFile", "0", {"Input Directory": "/data", "File Filter": "taxi.csv"}), "class": cls}
    parser = proc("SenMLParser", "1")
    dag, notes = read_dag(orjson.dumps({"processors": [src, parser], "wiring": [wire("0", "1")]}))
    m = map_dag(dag, notes=notes)
    assert task(m, "etlgetfile-0") == {"operator": "io.file_source", "config": {"path": "/data/taxi.csv"}}
    one = proc("ETLGetFile", "0", {"File Path": "/data/one.csv"})
    dag, notes = read_dag(orjson.dumps({"processors": [one, parser], "wiring": [wire("0", "1")]}))
    assert task(map_dag(dag, notes=notes), "etlgetfile-0")["config"] == {"path": "/data/one.csv"}


def test_etl_get_file_without_a_file_names_what_it_needs() -> None:
    found = {
        p.loc: p.msg
        for p in fails(proc("ETLGetFile", "0"), proc("SenMLParser", "1"), wiring=(wire("0", "1"),))
    }
    assert "File Path" in found["processors[0].properties.Input Directory"]


def test_the_published_etl_dag_in_riotbench_spellings_maps_every_class() -> None:
    """ETL.json as published, its source as RIoTBench's ETLGetFile and its classes in the
    other package spelling, with RIoTBench's InsertAzure sink after the annotation."""
    parsed, notes = read_dag(riotbench_spelling((DAGS / "ETL.json").read_bytes(), "7"))
    m = map_dag(parsed, notes=notes)
    operators = {t.operator for t in m.spec.tasks}
    assert {"io.file_source", "etl.senml_parse", "io.table_sink", "io.mqtt_sink"} <= operators
    sink = next(t for t in m.spec.tasks if t.operator == "io.table_sink")
    assert sink.config["table"] == "taxi" and sink.placement.tiers()[0].value == "cloud"


def test_unknown_classes_are_one_422_listing_them_all_and_the_class_map() -> None:
    problems = fails(
        SOURCE,
        proc("Mystery", "1"),
        proc("Enigma", "2"),
        wiring=(wire("0", "1"), wire("1", "2")),
    )
    first = problems[0]
    assert first.loc == "processors" and "2 unknown classes" in first.msg
    assert "Mystery" in first.msg and "Enigma" in first.msg
    assert any("ECHO_LEGACY_CLASS_MAP" in p.msg for p in problems)
