"""The RIoTBench ETL operators, one by one, on lines of the taxi sample and small cases."""

from __future__ import annotations

import math
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import orjson
import pytest
from pydantic import ValidationError

from echo_agent.operators import Operator, TaskContext, build
from echo_agent.operators.etl.bloom import BloomFilter
from echo_agent.operators.etl.errors import BadRecord, DeviceFileError

REPO = Path(__file__).resolve().parents[2]
DATA = REPO / "examples" / "etl" / "data"
SAMPLE = DATA / "TAXI_sample_data_senml.csv"
SCHEMA = DATA / "taxi-schema-without-annotation.csv"
SCHEMA_ANNOTATED = DATA / "taxi-schema_with_annotation.csv"
METADATA = DATA / "taxi-metadata.txt"

LINE = (
    '1358101800000,{"e":[{"u":"string","n":"taxi_identifier","sv":"149298F6D390FA640E80B41ED31199C5"},'
    '{"v":"1440","u":"second","n":"trip_time_in_secs"},{"v":"9.08","u":"meter","n":"trip_distance"},'
    '{"u":"string","n":"payment_type","sv":"CSH"}],"bt":1358101800000}'
)
TAXI = "149298F6D390FA640E80B41ED31199C5"


def ctx(tmp_path: Path, device: str = "edge-7") -> TaskContext:
    return TaskContext("df", "task", device, 1, tmp_path)


async def opened(name: str, config: dict[str, Any], tmp_path: Path) -> Operator:
    op = build(name, config)
    await op.open(ctx(tmp_path))
    return op


def run(op: Operator, records: Iterable[Any]) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for r in records:
        out.extend(op.process(r) or [])
    return out


def sample_lines(n: int | None = None) -> list[str]:
    lines = SAMPLE.read_text().splitlines()
    return lines if n is None else lines[:n]


# ------------------------------------------------------------------------ senml_parse


def test_parse_one_line_into_one_record() -> None:
    op = build("etl.senml_parse", {})
    assert run(op, [{"seq": 3, "line": LINE, "other": 1}]) == [
        {
            "seq": 3,
            "timestamp": 1358101800000,
            "taxi_identifier": TAXI,
            "trip_time_in_secs": 1440.0,
            "trip_distance": 9.08,
            "payment_type": "CSH",
        }
    ]


def test_parse_split_gives_one_part_per_observation_with_the_ids() -> None:
    op = build("etl.senml_parse", {"split": True})
    parts = run(op, [{"seq": 3, "line": LINE}])
    base = {"seq": 3, "timestamp": 1358101800000, "taxi_identifier": TAXI}
    assert parts == [
        base,
        {**base, "trip_time_in_secs": 1440.0},
        {**base, "trip_distance": 9.08},
        {**base, "payment_type": "CSH"},
    ]


def test_parse_every_sample_line() -> None:
    lines = sample_lines()
    out = run(build("etl.senml_parse", {}), ({"seq": i, "line": s} for i, s in enumerate(lines)))
    assert len(out) == len(lines) == 1000
    assert all(len(r) == 18 for r in out)  # seq + timestamp + 16 observations
    assert all(isinstance(r["fare_amount"], float) and isinstance(r["pickup_longitude"], str) for r in out)
    assert [r["seq"] for r in out] == list(range(1000))


def test_parse_json_alone_rfc8428_pack_and_names() -> None:
    op = build("etl.senml_parse", {"field": "text", "time_field": "t", "keep": []})
    pack = '[{"bn":"dev1/","bt":1.5,"n":"temp","v":21.5,"u":"Cel"},{"n":"ok","vb":true},{"n":"id","vs":"x"}]'
    assert run(op, [{"text": pack}]) == [{"t": 1.5, "dev1/temp": 21.5, "dev1/ok": True, "dev1/id": "x"}]
    assert run(op, [{"text": '{"e":[{"n":"a","v":2}]}'}]) == [{"t": None, "a": 2.0}]


@pytest.mark.parametrize(
    ("line", "problem"),
    [
        ("garbage", "expected '<timestamp_ms>,<SenML JSON>'"),
        ("12x,{}", "is not an integer"),
        ("1,{not json", "not JSON"),
        ('1,{"x":1}', "no 'e' array"),
        ('1,{"e":[{"n":"a","v":"abc"}]}', "v 'abc' is not a number"),
        ('1,{"e":[{"n":"a"}]}', "entry 'a' has no value"),
        ('1,{"e":[{"v":1}]}', "has no name"),
    ],
)
def test_parse_rejects_what_is_not_senml(line: str, problem: str) -> None:
    op = build("etl.senml_parse", {})
    with pytest.raises(BadRecord, match="seq=9") as info:
        op.process({"seq": 9, "line": line})
    assert problem in str(info.value)


def test_parse_skip_mode_counts_and_goes_on() -> None:
    op = build("etl.senml_parse", {"on_error": "skip"})
    out = run(op, [{"line": "bad"}, {"line": LINE}, {"nothing": 1}, {"line": "   "}])
    assert [r["taxi_identifier"] for r in out] == [TAXI]
    assert op.skipped == 2  # type: ignore[attr-defined]  # the blank line is no message, not an error


def test_parse_split_needs_the_id_observation() -> None:
    op = build("etl.senml_parse", {"split": True, "id_field": "meter_id"})
    with pytest.raises(BadRecord, match="no 'meter_id' observation"):
        op.process({"line": LINE})


# ----------------------------------------------------------------------- range_filter

RANGES = {"trip_time_in_secs": [140, 3155], "trip_distance": [1.37, 29.86], "fare_amount": [6, 201]}


def test_range_filter_nulls_what_is_out_of_range_inclusive_bounds() -> None:
    op = build("etl.range_filter", {"ranges": RANGES})
    rec = {"trip_time_in_secs": 140.0, "trip_distance": 30.0, "fare_amount": "7.5", "x": -1}
    assert run(op, [rec]) == [
        {"trip_time_in_secs": 140.0, "trip_distance": None, "fare_amount": "7.5", "x": -1}
    ]
    assert rec["trip_distance"] == 30.0  # the input record is not changed
    # not a number, NaN, a boolean: invalid; null: stays null; absent: not this record's business
    got = run(op, [{"trip_time_in_secs": "n/a", "trip_distance": math.nan, "fare_amount": True}])
    assert got == [{"trip_time_in_secs": None, "trip_distance": None, "fare_amount": None}]
    assert run(op, [{"trip_time_in_secs": None, "seq": 1}]) == [{"trip_time_in_secs": None, "seq": 1}]


def test_range_filter_drop_mode_drops_whole_records() -> None:
    op = build("etl.range_filter", {"ranges": RANGES, "on_invalid": "drop"})
    recs = [{"fare_amount": 5.99}, {"fare_amount": 6.0}, {"fare_amount": 201.01}, {"seq": 4}]
    assert run(op, recs) == [{"fare_amount": 6.0}, {"seq": 4}]


def test_range_filter_config_errors_name_the_field() -> None:
    with pytest.raises(ValidationError, match=r"min 10.0 is greater than max 1.0"):
        build("etl.range_filter", {"ranges": {"fare_amount": [10, 1]}})
    with pytest.raises(ValidationError) as info:
        build("etl.range_filter", {"ranges": {"fare_amount": [1]}})
    assert info.value.errors()[0]["loc"][:2] == ("ranges", "fare_amount")
    with pytest.raises(ValidationError, match="on_invalid"):
        build("etl.range_filter", {"ranges": RANGES, "on_invalid": "zero"})


# ----------------------------------------------------------------------- bloom_filter


def test_bloom_filter_sizing_and_membership() -> None:
    bloom = BloomFilter(1000, 0.01)
    assert bloom.size == math.ceil(-1000 * math.log(0.01) / math.log(2) ** 2) == 9586
    assert bloom.hashes == 7
    members = [f"taxi-{i}" for i in range(1000)]
    for m in members:
        bloom.add(m)
    assert all(m in bloom for m in members)  # no false negatives, ever
    false_positives = sum(f"other-{i}" in bloom for i in range(20_000))
    assert 0 < false_positives < 20_000 * 0.02  # about 1%: it really is approximate
    with pytest.raises(ValueError, match="needs"):
        BloomFilter(10**9, 1e-300)


async def test_bloom_filter_passes_exactly_the_trained_ids(tmp_path: Path) -> None:
    ids = [f"{i:032X}" for i in range(2000)]
    op = await opened("etl.bloom_filter", {"ids": ids[:1000]}, tmp_path)
    out = run(op, ({"taxi_identifier": i} for i in ids))
    assert [r["taxi_identifier"] for r in out] == ids[:1000]  # error rate 1e-6 by default
    assert run(op, [{"seq": 1}, {"taxi_identifier": None}]) == []


async def test_bloom_filter_from_a_file_of_ids(tmp_path: Path) -> None:
    path = tmp_path / "ids.txt"
    path.write_text("# trained taxis\nA\n\n  B  \n")
    op = await opened("etl.bloom_filter", {"ids_file": str(path), "ids": ["C"], "field": "t"}, tmp_path)
    assert [r["t"] for r in run(op, ({"t": x} for x in "ABCD"))] == ["A", "B", "C"]
    op = await opened("etl.bloom_filter", {"ids": ["7"], "field": "n"}, tmp_path)
    assert run(op, [{"n": 7}, {"n": 8}]) == [{"n": 7}]  # non-strings are matched as their JSON text


async def test_bloom_filter_refuses_a_serialised_java_filter(tmp_path: Path) -> None:
    path = tmp_path / "bloomfilter_taxi_id.model"
    path.write_bytes(b"\xac\xed\x00\x05sr\x00\x1fcom.google.common.hash.BloomFilter\x00\x01")
    op = build("etl.bloom_filter", {"ids_file": str(path)})
    with pytest.raises(DeviceFileError, match=r"is binary.*Guava.*one per line") as info:
        await op.open(ctx(tmp_path))
    assert str(path) in str(info.value) and "edge-7" in str(info.value)


async def test_bloom_filter_missing_file_names_path_and_device(tmp_path: Path) -> None:
    op = build("etl.bloom_filter", {"ids_file": str(tmp_path / "nope.txt")})
    with pytest.raises(DeviceFileError, match=r"ids_file '.*nope.txt' does not exist on device edge-7"):
        await op.open(ctx(tmp_path))


def test_bloom_filter_config() -> None:
    with pytest.raises(ValidationError, match="give ids"):
        build("etl.bloom_filter", {})
    with pytest.raises(ValidationError, match="error_rate"):
        build("etl.bloom_filter", {"ids": [], "error_rate": 0})


# ------------------------------------------------------------------------ interpolate


def test_interpolate_fills_nulls_with_the_mean_of_recent_valid_values() -> None:
    op = build("etl.interpolate", {"fields": ["a", "b"], "window": 2})
    recs = [{"a": None}, {"a": 1.0}, {"a": 2.0, "b": "x"}, {"a": 6.0}, {"a": None, "b": None}, {"c": 1}]
    assert run(op, recs) == [
        {"a": None},  # nothing seen yet: stays missing
        {"a": 1.0},
        {"a": 2.0, "b": "x"},  # not a number: neither filled nor remembered
        {"a": 6.0},
        {"a": 4.0, "b": None},  # the mean of the last two: 2 and 6
        {"c": 1},
    ]
    assert run(op, [{"a": None}]) == [{"a": 4.0}]  # filled values are not remembered


def test_interpolate_per_key_and_its_bound() -> None:
    op = build("etl.interpolate", {"fields": ["v"], "key": "id", "max_keys": 2})
    run(op, [{"id": "x", "v": 1}, {"id": "y", "v": 10}, {"id": "x", "v": 3}])
    assert run(op, [{"id": "x", "v": None}, {"id": "y", "v": None}]) == [
        {"id": "x", "v": 2.0},
        {"id": "y", "v": 10.0},
    ]
    run(op, [{"id": "z", "v": 5}])  # three keys: x, the least recently seen, is forgotten
    assert run(op, [{"id": "x", "v": None}]) == [{"id": "x", "v": None}]


def test_interpolate_snapshot_restore_continues_the_same() -> None:
    cfg = {"fields": ["v"], "key": "id", "window": 3}
    op = build("etl.interpolate", cfg)
    run(op, [{"id": i % 3, "v": float(i)} for i in range(10)])
    state = orjson.loads(orjson.dumps(op.snapshot()))
    copy = build("etl.interpolate", cfg)
    copy.restore(state)
    probe = [{"id": i, "v": None} for i in range(3)] + [{"id": 0, "v": 100.0}, {"id": 0, "v": None}]
    assert run(copy, probe) == run(op, probe)
    assert run(copy, [{"id": 1, "v": None}]) == [{"id": 1, "v": 4.0}]  # mean of 1, 4, 7


# ------------------------------------------------------------------------------- join


async def test_join_orders_complete_records_by_the_schema(tmp_path: Path) -> None:
    op = await opened("etl.join", {"schema_file": str(SCHEMA), "keep": ["note"]}, tmp_path)
    fields = SCHEMA.read_text().splitlines()[0].split(",")
    parsed = run(build("etl.senml_parse", {}), [{"seq": 5, "line": sample_lines(1)[0]}])[0]
    out = run(op, [{**parsed, "note": "n", "extra": 1}])
    assert len(out) == 1
    assert list(out[0]) == ["seq", "note", *fields]
    assert out[0]["fare_amount"] == 29.0 and out[0]["timestamp"] == 1358101800000


async def test_join_reassembles_split_parts(tmp_path: Path) -> None:
    lines = sample_lines(20)
    parser = build("etl.senml_parse", {"split": True})
    whole = run(build("etl.senml_parse", {}), ({"seq": i, "line": s} for i, s in enumerate(lines)))
    parts = run(parser, ({"seq": i, "line": s} for i, s in enumerate(lines)))
    assert len(parts) == 16 * 20
    # interleave the messages' parts: the join groups them by seq
    parts.sort(key=lambda p: (len(p), p["seq"]))
    op = await opened("etl.join", {"schema_file": str(SCHEMA)}, tmp_path)
    out = run(op, parts)
    assert sorted(out, key=lambda r: r["seq"]) == whole
    assert op.pending == {}  # type: ignore[attr-defined]


async def test_join_gives_up_incomplete_messages(tmp_path: Path) -> None:
    cfg: dict[str, Any] = {"fields": ["a", "b"], "max_pending": 2}
    op = await opened("etl.join", cfg, tmp_path)
    assert run(op, [{"seq": 1, "a": 1}, {"seq": 2, "a": 2}, {"seq": 3, "b": 3}]) == []  # 1 dropped
    assert run(op, [{"seq": 2, "b": 4}]) == [{"seq": 2, "a": 2, "b": 4}]
    assert list(await op.close() or []) == []  # 3 is dropped at the end
    op = await opened("etl.join", {**cfg, "on_incomplete": "emit"}, tmp_path)
    assert run(op, [{"seq": 1, "a": 1}, {"seq": 2, "a": 2}, {"seq": 3, "b": 3}]) == [
        {"seq": 1, "a": 1, "b": None}
    ]
    assert list(await op.close() or []) == [{"seq": 2, "a": 2, "b": None}, {"seq": 3, "a": None, "b": 3}]


async def test_join_snapshot_restore_and_bad_input(tmp_path: Path) -> None:
    op = await opened("etl.join", {"fields": ["a", "b"], "key": "msg"}, tmp_path)
    run(op, [{"msg": "m1", "a": 1}, {"msg": 2, "b": 2}])
    copy = await opened("etl.join", {"fields": ["a", "b"], "key": "msg"}, tmp_path)
    copy.restore(orjson.loads(orjson.dumps(op.snapshot())))
    assert run(copy, [{"msg": 2, "a": 0}, {"msg": "m1", "b": 9}]) == [
        {"msg": 2, "a": 0, "b": 2},
        {"msg": "m1", "a": 1, "b": 9},
    ]
    with pytest.raises(BadRecord, match="no 'msg'"):
        copy.process({"a": 1})
    with pytest.raises(ValidationError, match="exactly one of schema_file and fields"):
        build("etl.join", {})
    missing = build("etl.join", {"schema_file": "no/such/schema.csv"})
    with pytest.raises(DeviceFileError, match=r"'no/such/schema.csv' does not exist on device edge-7"):
        await missing.open(ctx(tmp_path))


async def test_schema_file_problems_are_reported(tmp_path: Path) -> None:
    bad = tmp_path / "schema.csv"
    for text, problem in [
        ("", "is empty"),
        ("a,,b\n", "empty field name"),
        ("a,a\n", "names field 'a' twice"),
        ("a,b\nu\n", "has 1 units on line 2 for 2 fields"),
        ("a,b\nu,u\nv,x\n", "must say v or sv"),
    ]:
        bad.write_text(text)
        with pytest.raises(DeviceFileError, match=problem):
            await build("etl.join", {"schema_file": str(bad)}).open(ctx(tmp_path))


# --------------------------------------------------------------------------- annotate


async def test_annotate_adds_the_metadata(tmp_path: Path) -> None:
    meta = tmp_path / "meta.txt"
    meta.write_text("A:uber,sam,Houston\n\nB:jam,kelly,San Diego, CA\n")
    op = await opened("etl.annotate", {"metadata_file": str(meta)}, tmp_path)
    out = run(op, [{"taxi_identifier": "A", "x": 1}, {"taxi_identifier": "B"}, {"taxi_identifier": "C"}])
    assert out == [
        {"taxi_identifier": "A", "x": 1, "taxi_company": "uber", "drivername": "sam", "taxi_city": "Houston"},
        {"taxi_identifier": "B", "taxi_company": "jam", "drivername": "kelly", "taxi_city": "San Diego, CA"},
        {"taxi_identifier": "C", "taxi_company": None, "drivername": None, "taxi_city": None},
    ]
    dropping = await opened("etl.annotate", {"metadata_file": str(meta), "on_missing": "drop"}, tmp_path)
    assert len(run(dropping, [{"taxi_identifier": "A"}, {"taxi_identifier": "C"}, {}])) == 1


async def test_annotate_shipped_metadata_covers_the_sample(tmp_path: Path) -> None:
    op = await opened("etl.annotate", {"metadata_file": str(METADATA)}, tmp_path)
    parsed = run(build("etl.senml_parse", {}), ({"line": s} for s in sample_lines()))
    assert all(r["taxi_company"] for r in run(op, parsed))


async def test_annotate_file_problems(tmp_path: Path) -> None:
    meta = tmp_path / "meta.txt"
    meta.write_text("A:uber,sam,Houston\nB uber\n")
    with pytest.raises(DeviceFileError, match="line 2 has no ':'"):
        await build("etl.annotate", {"metadata_file": str(meta)}).open(ctx(tmp_path))
    meta.write_text("A:uber,sam\n")
    with pytest.raises(DeviceFileError, match="line 1 has 2 values for the 3 fields"):
        await build("etl.annotate", {"metadata_file": str(meta)}).open(ctx(tmp_path))
    with pytest.raises(
        DeviceFileError, match=r"metadata_file '/nowhere/m.txt' does not exist on device edge-7"
    ):
        await build("etl.annotate", {"metadata_file": "/nowhere/m.txt"}).open(ctx(tmp_path))
    with pytest.raises(DeviceFileError, match=r"is a directory|is not a regular file"):
        await build("etl.annotate", {"metadata_file": str(tmp_path)}).open(ctx(tmp_path))


# ----------------------------------------------------------------------- csv_to_senml


async def test_csv_to_senml_with_the_schema(tmp_path: Path) -> None:
    op = await opened("etl.csv_to_senml", {"schema_file": str(SCHEMA_ANNOTATED)}, tmp_path)
    rec = {
        "seq": 4,
        "timestamp": 1358101800000,
        "taxi_identifier": TAXI,
        "trip_time_in_secs": 1440.0,
        "tip_amount": None,
        "taxi_company": "uber",
        "not_in_schema": 1,
    }
    (out,) = run(op, [rec])
    assert list(out) == ["seq", "senml"]
    assert out["seq"] == 4
    assert orjson.loads(out["senml"]) == {
        "e": [
            {"n": "taxi_identifier", "u": "string", "sv": TAXI},
            {"n": "trip_time_in_secs", "u": "second", "v": 1440.0},
            {"n": "taxi_company", "u": "string", "sv": "uber"},
        ],
        "bt": 1358101800000,
    }
    with pytest.raises(BadRecord, match="'fare_amount' is 'free', but the schema says a number"):
        op.process({"fare_amount": "free"})


async def test_csv_to_senml_round_trips_through_the_parser(tmp_path: Path) -> None:
    parsed = run(
        build("etl.senml_parse", {}), ({"seq": i, "line": s} for i, s in enumerate(sample_lines(50)))
    )
    inferred = build("etl.csv_to_senml", {"output": "line", "keep": ["seq"]})
    again = run(build("etl.senml_parse", {}), run(inferred, parsed))
    assert again == parsed
    op = build("etl.csv_to_senml", {"keep": [], "time_field": "t"})
    (out,) = run(op, [{"t": 2, "flag": True, "tags": ["a"], "gone": None}])
    assert orjson.loads(out["senml"]) == {
        "e": [{"n": "flag", "bv": True}, {"n": "tags", "sv": '["a"]'}],
        "bt": 2,
    }
