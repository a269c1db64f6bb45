"""Original ECHO DAGs as ECHO dataflow specs: each NiFi class, after records and after files.

File filters as globs, NiFi arguments and MQTT URLs, batch edges, sinks with successors.
"""

from __future__ import annotations

from typing import Any

import pytest

from echo_master.legacy.nifi import glob_of, literal_name, mqtt_url, split_args
from echo_master.legacy.processors import TAXI_RANGES
from tests.unit.legacy_dags import FILES, SOURCE, edge, edges, fails, mapped, proc, task, wire

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
            "io.table_sink",
            {
                "path": "~/.local/share/echo/azure-tables.sqlite",
                "table": "Taxi_data",
                "key": ["taxi_identifier", "hack_license"],
            },
        ),
        (
            proc("in.dreamlab.processors.InsertAzure", "1", {"Azure Table Name": "2013 trips"}),
            "io.table_sink",
            {
                "path": "~/.local/share/echo/azure-tables.sqlite",
                "table": "t_2013_trips",
                "key": ["taxi_identifier", "hack_license"],
            },
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
