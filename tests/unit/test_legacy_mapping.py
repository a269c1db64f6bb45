"""Original ECHO DAGs as ECHO dataflow specs: the originals, relationships, placement, periods.

The classes one by one: ``test_legacy_mapping_classes.py``; problems:
``test_legacy_mapping_problems.py``; the DAG helpers: ``legacy_dags.py``.
"""

from __future__ import annotations

import itertools

import pytest

from echo_master.legacy.processors import TAXI_RANGES
from echo_scheduler.validating import problems as validation_problems
from tests.unit.legacy_dags import FILES, SOURCE, edges, fails, mapped, original, proc, task, wire

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


# --------------------------------------------------------------- against the operator catalogue


@pytest.mark.parametrize("name", ["ETL.json", "TFDAG.json", "trivial.json"])
def test_mapped_originals_pass_the_schedulers_validation(name: str) -> None:
    """Operators, configs and edge models agree with the catalogue (kinds, roles, fields)."""
    assert validation_problems(original(name).spec) == []
