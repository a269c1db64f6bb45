"""Original ECHO DAGs as ECHO dataflow specs: classes, relationships, placement, edge models."""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Any

import orjson
import pytest

from echo_master.legacy.mapping import Mapped, map_dag
from echo_master.legacy.nifi import glob_of, literal_name, mqtt_url, split_args
from echo_master.legacy.parsing import read_dag
from echo_master.legacy.processors import TAXI_RANGES
from echo_master.legacy.routes import locate
from echo_scheduler.validating import problems as validation_problems
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


# ------------------------------------------------------------------------------ the originals


def test_etl_dag_is_the_riotbench_chain_with_paths_unchanged() -> None:
    m = original("ETL.json")
    assert [(t.id, t.operator) for t in m.spec.tasks] == [
        ("getfile-0", "io.file_source"),
        ("senmlparser-1", "etl.senml_parse"),
        ("edgentfilter_rbi-2-range", "etl.range_filter"),
        ("edgentfilter_rbi-2-bloom", "etl.bloom_filter"),
        ("edgentfilter_rbi-2-interpolate", "etl.interpolate"),
        ("joinetl-3", "etl.join"),
        ("annotateetl-4", "etl.annotate"),
        ("csvsenmlparser-5", "etl.csv_to_senml"),
        ("publishmqtt-6", "io.mqtt_sink"),
    ]
    chain = [t.id for t in m.spec.tasks]
    assert edges(m) == {(a, b, "stream") for a, b in itertools.pairwise(chain)}
    assert task(m, "getfile-0")["config"] == {"path": "/home/ETL/TAXI_sample_data_senml.csv"}
    assert m.spec.task("edgentfilter_rbi-2-bloom").config["ids_file"] == "/home/ETL/bloomfilter_taxi_id.model"
    assert m.spec.task("joinetl-3").config == {"schema_file": "/home/ETL/taxi-schema-without-annotation.csv"}
    assert m.spec.task("annotateetl-4").config == {"metadata_file": "/home/ETL/taxi-metadata-fulldataset.txt"}
    assert m.spec.task("csvsenmlparser-5").config == {
        "schema_file": "/home/ETL/taxi-schema-without-annotation.csv"
    }
    assert task(m, "publishmqtt-6")["config"] == {
        "url": "mqtt://10.24.240.222:61613",
        "topic": "ETL",
        "qos": 1,
        "retain": True,
        "format": "text",
        "field": "senml",
    }
    assert any("Password is not used" in n for n in m.notes)
    assert all(not t.placement.input_stream for t in m.spec.tasks)
    assert [p.tasks for p in m.processors][2] == [
        "edgentfilter_rbi-2-range",
        "edgentfilter_rbi-2-bloom",
        "edgentfilter_rbi-2-interpolate",
    ]
    assert m.qos == 1 and m.inputstreams == ["blah"]


def test_edgent_filter_rbi_expands_into_range_bloom_interpolate() -> None:
    m = mapped(
        SOURCE,
        proc("EdgentFilter_RBI", "1", {"Bloom Filter File Path": "/m/ids.txt"}),
        proc("PublishMQTT", "2", {"Broker URI": "tcp://h:1883", "Topic": "t"}),
        wiring=(wire("0", "1"), wire("1", "2")),
    )
    assert task(m, "edgentfilter_rbi-1-range") == {
        "operator": "etl.range_filter",
        "config": {"ranges": {k: list(v) for k, v in TAXI_RANGES.items()}},
    }
    assert task(m, "edgentfilter_rbi-1-bloom") == {
        "operator": "etl.bloom_filter",
        "config": {"field": "taxi_identifier", "ids_file": "/m/ids.txt"},
    }
    assert task(m, "edgentfilter_rbi-1-interpolate")["operator"] == "etl.interpolate"
    assert edges(m) == {
        ("getfile-0", "edgentfilter_rbi-1-range", "stream"),
        ("edgentfilter_rbi-1-range", "edgentfilter_rbi-1-bloom", "stream"),
        ("edgentfilter_rbi-1-bloom", "edgentfilter_rbi-1-interpolate", "stream"),
        ("edgentfilter_rbi-1-interpolate", "publishmqtt-2", "stream"),
    }


def test_tfdag_pins_inputs_drops_failure_and_moves_files() -> None:
    m = original("TFDAG.json")
    streams = {t.id: t.placement.input_stream for t in m.spec.tasks}
    assert streams == {
        "getfilebatch-0": "1",
        "putfilebatch-1": "2",
        "executeprocessbatch-2": "2",
        "filterimagesedgent-3": "2",
        "jointf-4": "2",
        "executeprocessbatch-5": "3",
        "putfilebatch-6": "3",
        "logattribute-7": "1",
    }
    assert edges(m) == {
        ("getfilebatch-0", "putfilebatch-1", "file"),
        ("getfilebatch-0", "putfilebatch-6", "file"),
        # PutFileBatch is a sink in ECHO: what it receives goes on to its successor
        ("getfilebatch-0", "executeprocessbatch-2", "file"),
        ("executeprocessbatch-2", "filterimagesedgent-3", "stream"),
        ("filterimagesedgent-3", "jointf-4", "stream"),
        ("jointf-4", "executeprocessbatch-5", "stream"),
        ("executeprocessbatch-5", "logattribute-7", "stream"),
    }
    # putfilebatch-6 -> jointf-4 is a failure connection: no edge, but a note
    assert any("wiring[6]" in n and "'failure'" in n for n in m.notes)
    assert task(m, "getfilebatch-0") == {
        "operator": "io.dir_source",
        "config": {"path": "/root/ETHTest", "pattern": "*", "recursive": True, "poll": 30.0},
    }
    assert task(m, "putfilebatch-1") == {
        "operator": "io.dir_sink",
        "config": {"path": "/home/ubuntu/usbmem/tmp", "conflict": "fail", "create": True},
    }
    assert task(m, "executeprocessbatch-2") == {
        "operator": "process",
        "config": {
            "mode": "file",
            "command": ["bash", "/home/ubuntu/darkflow/test1.sh", "/home/ubuntu/usbmem/tmp", "{input}"],
        },
    }
    assert task(m, "executeprocessbatch-5")["config"] == {
        "mode": "batch",
        "command": ["bash", "/home/aakash/darkflow/darkflow/script.sh", "/home/aakash/nifi/bak"],
    }
    assert task(m, "filterimagesedgent-3") == {
        "operator": "core.filter",
        "config": {"where": 'coalesce(label, record["class"]) == "person"'},
    }
    assert task(m, "logattribute-7") == {"operator": "io.log_sink", "config": {}}


def test_trivial_dag_sets_the_attribute() -> None:
    m = original("trivial.json")
    assert task(m, "getfile-0") == {"operator": "io.file_source", "config": {"path": "/nifi-1.1.2/README"}}
    assert task(m, "updateattribute5-1") == {"operator": "core.map", "config": {"set": {"id.id6": '"6"'}}}
    assert edges(m) == {("getfile-0", "updateattribute5-1", "stream")}
    assert m.spec.name == "dag-getfile"


# ------------------------------------------------------------------------------- the classes


@pytest.mark.parametrize(
    ("processor", "operator", "config"),
    [
        (proc("SenMLParser", "1"), "etl.senml_parse", {}),
        (
            proc("Interpolation", "1"),
            "etl.interpolate",
            {"fields": list(TAXI_RANGES), "key": "taxi_identifier"},
        ),
        (proc("JoinETL", "1", {"Join Schema File Path": "/s.csv"}), "etl.join", {"schema_file": "/s.csv"}),
        (
            proc("AnnotateETL", "1", {"Metadata File Path": "/m.txt"}),
            "etl.annotate",
            {"metadata_file": "/m.txt"},
        ),
        (
            proc("CSVSenMLParser", "1", {"Annotation Schema File Path": "/a.csv"}),
            "etl.csv_to_senml",
            {"schema_file": "/a.csv"},
        ),
        (proc("CSVSenMLParser", "1"), "etl.csv_to_senml", {}),
        (
            proc("UpdateAttribute", "1", {"city": "nyc", "copy": "${name}", "gone": None}),
            "core.map",
            {"set": {"city": '"nyc"', "copy": 'record["name"]'}},
        ),
        (
            proc("UpdateAttribute", "1", {"Delete Attributes Expression": "a|b"}),
            "core.map",
            {"drop": ["a", "b"]},
        ),
        (proc("UpdateAttribute", "1"), "core.passthrough", {}),
        (
            proc("FilterImagesEdgent", "1", {"Object Class": "car"}),
            "core.filter",
            {"where": 'coalesce(label, record["class"]) == "car"'},
        ),
        (proc("JoinTF", "1", {"Object Class": "person"}), "core.passthrough", {}),
        (proc("JoinFiles", "1", {"Directory": "/d", "Batch Size": "3"}), "core.passthrough", {}),
        (proc("LogAttribute", "1", {"Log Level": "warn"}), "io.log_sink", {}),
        (
            proc("InsertAzure", "1", {"Azure Table Name": "Taxi data"}),
            "io.nats_sink",
            {"subject": "azure.Taxi_data"},
        ),
        (
            proc("PublishMQTT", "1", {"Broker URI": "ssl://b:8883", "Topic": "t", "Retain Message": "false"}),
            "io.mqtt_sink",
            {"url": "mqtts://b:8883", "topic": "t", "retain": False},
        ),
        (proc("PutFile", "1", {"Directory": "/out"}), "io.file_sink", {"path": "/out/putfile-1.jsonl"}),
        (
            proc("ExecuteProcess", "1", {"Command": "python3", "Command Arguments": "-u score.py"}),
            "process",
            {"mode": "lines", "command": ["python3", "-u", "score.py"]},
        ),
        (
            proc(
                "ExecuteProcessBatch",
                "1",
                {
                    "Command": "sh",
                    "Command Arguments": 'run.sh;"a b;c"',
                    "Argument Delimiter": ";",
                    "TZ": "UTC",
                },
            ),
            "process",
            {"mode": "batch", "command": ["sh", "run.sh", "a b;c"], "env": {"TZ": "UTC"}},
        ),
        (proc("SplitText", "1"), "core.passthrough", {}),
    ],
)
def test_each_class_after_records(processor: dict[str, Any], operator: str, config: dict[str, Any]) -> None:
    m = mapped(SOURCE, proc("SenMLParser", "p"), processor, wiring=(wire("0", "p"), wire("p", "1")))
    tid = next(t.id for t in m.spec.tasks if t.id.endswith("-1"))
    assert task(m, tid) == {"operator": operator, "config": config}
    assert edges(m) == {("getfile-0", "senmlparser-p", "stream"), ("senmlparser-p", tid, "stream")}


FILES = proc("GetFileBatch", "0", {"Input Directory": "/in"})


@pytest.mark.parametrize(
    ("processor", "operator", "config"),
    [
        (
            proc("PutFile", "1", {"Directory": "/out", "Conflict Resolution Strategy": "replace"}),
            "io.dir_sink",
            {"path": "/out", "conflict": "replace", "create": True},
        ),
        (
            proc("PutFileBatch", "1", {"Directory": "/out", "Create Missing Directories": "false"}),
            "io.dir_sink",
            {"path": "/out", "conflict": "fail", "create": False},
        ),
        (proc("SplitText", "1", {"Header Line Count": "1"}), "core.split_lines", {"skip": 1}),
        (
            proc(
                "ExecuteProcess",
                "1",
                {"Command": "convert", "Command Arguments": "{input} -resize 50% out.png"},
            ),
            "process",
            {"mode": "file", "command": ["convert", "{input}", "-resize", "50%", "out.png"]},
        ),
    ],
)
def test_each_class_after_a_file_source(
    processor: dict[str, Any], operator: str, config: dict[str, Any]
) -> None:
    m = mapped(FILES, processor, wiring=(wire("0", "1"),))
    assert task(m, next(t.id for t in m.spec.tasks if t.id.endswith("-1"))) == {
        "operator": operator,
        "config": config,
    }
    assert {model for _a, _b, model in edges(m)} == {"file"}


def test_get_file_with_a_pattern_reads_a_directory_and_splits_lines_for_record_consumers() -> None:
    m = mapped(
        proc(
            "GetFile",
            "0",
            {"Input Directory": "/logs", "File Filter": r".*\.log", "Recurse Subdirectories": "false"},
        ),
        proc("SenMLParser", "1"),
        wiring=(wire("0", "1"),),
    )
    assert task(m, "getfile-0") == {
        "operator": "io.dir_source",
        "config": {"path": "/logs", "pattern": "*.log", "recursive": False},
    }
    assert task(m, "senmlparser-1-lines")["operator"] == "core.split_lines"
    assert edges(m) == {
        ("getfile-0", "senmlparser-1-lines", "file"),
        ("senmlparser-1-lines", "senmlparser-1", "stream"),
    }
    assert [p.tasks for p in m.processors][1] == ["senmlparser-1", "senmlparser-1-lines"]


def test_get_file_feeding_split_text_emits_files() -> None:
    m = mapped(
        SOURCE,
        proc("SplitText", "1", rels=("splits", "original", "failure")),
        proc("SenMLParser", "2"),
        wiring=(wire("0", "1"), wire("1", "2", "splits", "original")),
    )
    assert task(m, "getfile-0")["operator"] == "io.dir_source"
    assert task(m, "getfile-0")["config"]["pattern"] == "in.csv"
    assert task(m, "splittext-1")["operator"] == "core.split_lines"
    assert edges(m) == {("getfile-0", "splittext-1", "file"), ("splittext-1", "senmlparser-2", "stream")}
    assert any("'original'" in n and "dropped" in n for n in m.notes)


@pytest.mark.parametrize(
    ("regex", "glob"),
    [
        (r"[^\.].*", "*"),
        (r".*\.csv", "*.csv"),
        (r"img_.\.png", "img_?.png"),
        (r"^data.+$", "data?*"),
        (r"[0-9]a\.txt", "[0-9]a.txt"),
        (r"[^x]", "[!x]"),
        ("*.jpg", "*.jpg"),  # not a regex: a glob already
        (r"a\*b", "a[*]b"),
        (r".*\.(jpg|png)", None),
        (r"\d+\.csv", None),
        (r"x{2}", None),
        ("a+", None),
    ],
)
def test_file_filters_as_globs(regex: str, glob: str | None) -> None:
    assert glob_of(regex) == glob


def test_a_file_filter_without_a_glob_is_a_problem() -> None:
    found = {
        p.loc: p.msg
        for p in fails(proc("GetFileBatch", "0", {"Input Directory": "/i", "File Filter": "a|b"}))
    }
    assert "globs" in found["processors[0].properties.File Filter"]


def test_join_files_after_files_has_no_task_and_forwards() -> None:
    m = mapped(
        FILES,
        proc("JoinFiles", "1", {"Directory": "/d"}),
        proc("PutFile", "2", {"Directory": "/o", "Conflict Resolution Strategy": "ignore"}),
        wiring=(wire("0", "1"), wire("1", "2")),
    )
    assert [t.id for t in m.spec.tasks] == ["getfilebatch-0", "putfile-2"]
    assert edges(m) == {("getfilebatch-0", "putfile-2", "file")}
    assert m.spec.task("putfile-2").config["conflict"] == "rename"
    assert [p.tasks for p in m.processors] == [["getfilebatch-0"], [], ["putfile-2"]]
    assert any("JoinFiles has no task" in n for n in m.notes)


def test_literal_file_filters() -> None:
    assert literal_name("TAXI_sample_data_senml.csv") == "TAXI_sample_data_senml.csv"
    assert literal_name(r"data\.csv") == "data.csv"
    assert literal_name("README") == "README"
    for pattern in (r".*\.csv", "[^\\.].*", "a|b", "x+", "", "^a$"):
        assert literal_name(pattern) is None, pattern


def test_nifi_argument_splitting_and_mqtt_urls() -> None:
    assert split_args("/a.sh;/tmp/x", ";") == ["/a.sh", "/tmp/x"]
    assert split_args('-c "echo a b"', " ") == ["-c", "echo a b"]
    assert split_args("a\tb", " ") == ["a", "b"]
    assert split_args(None, " ") == []
    assert mqtt_url("tcp://10.0.0.1:1883") == "mqtt://10.0.0.1:1883"
    assert mqtt_url("localhost:1883") == "mqtt://localhost:1883"


def test_batch_size_makes_batch_edges_into_batch_processors() -> None:
    m = mapped(
        SOURCE,
        proc("SenMLParser", "p"),
        proc("ExecuteProcessBatch", "1", {"Command": "wc", "Batch Size": "50", "Batch Duration": "2 sec"}),
        wiring=(wire("0", "p"), wire("p", "1")),
    )
    e = edge(m, "senmlparser-p", "executeprocessbatch-1")
    assert e.model.value == "batch" and e.batch is not None
    assert (e.batch.count, e.batch.seconds) == (50, 2.0)


def test_put_file_with_successors_forwards_what_it_receives() -> None:
    m = mapped(
        FILES,
        proc("PutFile", "1", {"Directory": "/out"}),
        proc("ExecuteProcess", "2", {"Command": "identify"}),
        wiring=(wire("0", "1"), wire("1", "2")),
    )
    assert edges(m) == {
        ("getfilebatch-0", "putfile-1", "file"),
        ("getfilebatch-0", "executeprocess-2", "file"),
    }
    assert any("a sink in ECHO" in n for n in m.notes)


# ------------------------------------------------------------------------------ relationships


def test_auto_terminated_undeclared_and_failure_relationships_give_no_edge() -> None:
    m = mapped(
        SOURCE,
        proc("SenMLParser", "1", rels=("success", "failure"), terminated=("success",)),
        proc("LogAttribute", "2"),
        proc("LogAttribute", "3"),
        proc("LogAttribute", "4"),
        wiring=(
            wire("0", "1"),
            wire("1", "2", "success"),
            wire("1", "3", "failure"),
            wire("1", "4", "matched"),
        ),
    )
    assert edges(m) == {("getfile-0", "senmlparser-1", "stream")}
    notes = "\n".join(m.notes)
    assert "wiring[1]: relationship 'success'" in notes and "auto-terminated" in notes
    assert "wiring[2]: relationship 'failure'" in notes and "no failure routing" in notes
    assert "wiring[3]:" in notes and "declares no relationship 'matched'" in notes


def test_a_connection_with_one_live_relationship_is_an_edge() -> None:
    m = mapped(
        SOURCE,
        proc("SenMLParser", "1", rels=("success", "failure")),
        wiring=(wire("0", "1"), wire("0", "1", "success")),
    )
    assert edges(m) == {("getfile-0", "senmlparser-1", "stream")}
    assert any("duplicate" in n for n in m.notes)


# -------------------------------------------------------------------------- placement, QOS


def test_source_uuid_pins_every_task_of_the_processor() -> None:
    m = mapped(
        SOURCE,
        proc("EdgentFilter_RBI", "1", {"Bloom Filter File Path": "/ids"}, isInput=True, sourceUuid="cam-7"),
        proc("SenMLParser", "2", sourceUuid="ignored"),
        wiring=(wire("0", "1"), wire("1", "2")),
    )
    pinned = {t.id: t.placement.input_stream for t in m.spec.tasks}
    assert pinned == {
        "getfile-0": None,
        "edgentfilter_rbi-1-range": "cam-7",
        "edgentfilter_rbi-1-bloom": "cam-7",
        "edgentfilter_rbi-1-interpolate": "cam-7",
        "senmlparser-2": None,
    }
    assert any("sourceUuid without isInput" in n for n in m.notes)


def test_is_input_without_source_uuid_uses_the_only_input_stream() -> None:
    m = mapped({**SOURCE, "isInput": True}, inputstreams=["feed"])
    assert m.spec.task("getfile-0").placement.input_stream == "feed"


@pytest.mark.parametrize("streams", [[], ["a", "b"]])
def test_is_input_without_a_stream_to_pin_to_is_a_problem(streams: list[str]) -> None:
    found = {p.loc: p.msg for p in fails({**SOURCE, "isInput": True}, inputstreams=streams)}
    assert "processors[0].sourceUuid" in found
    assert "isInput" in found["processors[0].sourceUuid"]


def test_insert_azure_runs_in_the_cloud() -> None:
    m = mapped(SOURCE, proc("InsertAzure", "1"), wiring=(wire("0", "1"),))
    assert m.spec.task("insertazure-1").placement.tiers()[0].value == "cloud"


# ---------------------------------------------------------------------------- schedulingPeriod


@pytest.mark.parametrize(
    ("period", "interval", "poll"),
    [("30 sec", None, 30.0), ("5 min", "0 sec", 300.0), ("100 millis", "2 sec", 2.0), (None, "1 min", 60.0)],
)
def test_scheduling_period_is_the_directory_poll(
    period: str | None, interval: str | None, poll: float
) -> None:
    props = {"Input Directory": "/in", "Polling Interval": interval}
    config = [{"schedulingPeriod": period}] if period else []
    m = mapped(proc("GetFileBatch", "0", props, config=config))
    assert m.spec.task("getfilebatch-0").config["poll"] == pytest.approx(poll)


def test_scheduling_period_of_a_single_file_is_noted() -> None:
    m = mapped({**SOURCE, "config": [{"schedulingPeriod": "30 sec"}]})
    assert "rate" not in m.spec.task("getfile-0").config and "poll" not in m.spec.task("getfile-0").config
    assert any("schedulingPeriod 30 s" in n for n in m.notes)


def test_bad_scheduling_period_is_located() -> None:
    found = {p.loc: p.msg for p in fails({**FILES, "config": [{"schedulingPeriod": "0 0 * * * ?"}]})}
    assert "not a time period" in found["processors[0].config.schedulingPeriod"]


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


# --------------------------------------------------------------- against the operator catalogue


@pytest.mark.parametrize("name", ["ETL.json", "TFDAG.json", "trivial.json"])
def test_mapped_originals_pass_the_schedulers_validation(name: str) -> None:
    """Operators, configs and edge models agree with the catalogue (kinds, roles, fields)."""
    assert validation_problems(original(name).spec) == []
