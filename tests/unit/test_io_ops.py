"""The io operators and core.filter/core.map on local files (no brokers, no platform)."""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from echo_agent.operators import TaskContext, build
from echo_agent.operators.expr_ops import ExpressionFailed
from echo_agent.operators.io_brokers import BrokerUnreachable
from echo_agent.operators.io_files import LineTooLong, MissingPath, numbered, safe_name
from echo_shared.operators import CATALOGUE, config_problems
from tests.harness.waiting import eventually


def exists(path: str) -> bool:
    return Path(path).exists()


def ctx(tmp_path: Path, **kw: Any) -> TaskContext:
    return TaskContext("df-1", "t1", "edge-7", 1, tmp_path / "data", **kw)


async def opened(name: str, config: dict[str, Any], tmp_path: Path, **kw: Any) -> Any:
    op = build(name, config)
    await op.open(ctx(tmp_path, **kw))
    return op


async def drain(op: Any) -> list[dict[str, Any]]:
    out = [r async for r in op.generate()]
    await op.close()
    return out


# ---------------------------------------------------------------------- io.file_source


async def test_file_source_emits_lines_after_the_header(tmp_path: Path) -> None:
    f = tmp_path / "in.csv"
    f.write_bytes(b"id,city\r\n1,nyc\r\n\n2,la")  # CRLF, an empty line, no final newline
    op = await opened("io.file_source", {"path": str(f), "skip": 1}, tmp_path)
    assert await drain(op) == [
        {"seq": 0, "line": "1,nyc"},
        {"seq": 1, "line": ""},
        {"seq": 2, "line": "2,la"},
    ]


async def test_file_source_resumes_from_its_snapshot(tmp_path: Path) -> None:
    f = tmp_path / "in.txt"
    f.write_text("".join(f"line {i}\n" for i in range(2500)), encoding="utf-8")
    op = await opened("io.file_source", {"path": str(f)}, tmp_path)
    it = op.generate()
    first = [await it.__anext__() for _ in range(1100)]
    state = op.snapshot()
    await it.aclose()
    await op.close()
    again = build("io.file_source", {"path": str(f)})
    again.restore(state)
    await again.open(ctx(tmp_path))
    rest = await drain(again)
    assert [r["seq"] for r in first + rest] == list(range(2500))
    assert rest[0] == {"seq": 1100, "line": "line 1100"}


async def test_file_source_missing_file_fails_in_open_naming_path_and_device(tmp_path: Path) -> None:
    op = build("io.file_source", {"path": str(tmp_path / "nope.txt")})
    with pytest.raises(MissingPath) as e:
        await op.open(ctx(tmp_path))
    assert str(tmp_path / "nope.txt") in str(e.value) and "edge-7" in str(e.value)
    with pytest.raises(IsADirectoryError, match="not a regular file"):
        await build("io.file_source", {"path": str(tmp_path)}).open(ctx(tmp_path))


async def test_file_source_line_limit(tmp_path: Path) -> None:
    f = tmp_path / "long.txt"
    f.write_bytes(b"ok\n" + b"x" * 100 + b"\n")
    op = await opened("io.file_source", {"path": str(f), "max_line_bytes": 50}, tmp_path)
    with pytest.raises(LineTooLong, match="line 2 of"):
        await drain(op)
    await op.close()
    exact = tmp_path / "exact.txt"
    exact.write_bytes(b"x" * 50 + b"\n")
    op = await opened("io.file_source", {"path": str(exact), "max_line_bytes": 50}, tmp_path)
    assert await drain(op) == [{"seq": 0, "line": "x" * 50}]


# ---------------------------------------------------------------------- io.dir_source


def make_tree(root: Path) -> None:
    (root / "sub").mkdir(parents=True)
    for rel, data in {
        "b.csv": b"bb",
        "a.csv": b"a",
        "c.txt": b"c",
        ".hidden.csv": b"h",
        "sub/d.csv": b"dd",
    }.items():
        (root / rel).write_bytes(data)


async def test_dir_source_scans_once_in_order(tmp_path: Path) -> None:
    root = tmp_path / "in"
    make_tree(root)
    op = await opened("io.dir_source", {"path": str(root), "pattern": "*.csv"}, tmp_path)
    out = await drain(op)
    assert [(r["name"], r["size"]) for r in out] == [("a.csv", 1), ("b.csv", 2)]
    assert out[0]["path"] == str((root / "a.csv").absolute())
    assert all(exists(r["path"]) for r in out)  # never deletes its sources
    op = await opened("io.dir_source", {"path": str(root), "recursive": True}, tmp_path)
    assert [r["relpath"] for r in await drain(op)] == ["a.csv", "b.csv", "c.txt", "sub/d.csv"]
    op = await opened("io.dir_source", {"path": str(root), "pattern": ".*"}, tmp_path)
    assert [r["name"] for r in await drain(op)] == [".hidden.csv"]


async def test_dir_source_snapshot_skips_what_was_emitted(tmp_path: Path) -> None:
    root = tmp_path / "in"
    make_tree(root)
    op = await opened("io.dir_source", {"path": str(root)}, tmp_path)
    it = op.generate()
    assert (await it.__anext__())["name"] == "a.csv"
    state = op.snapshot()
    await it.aclose()
    again = build("io.dir_source", {"path": str(root)})
    again.restore(state)
    await again.open(ctx(tmp_path))
    assert [r["name"] for r in await drain(again)] == ["b.csv", "c.txt"]


async def test_dir_source_polls_for_new_files(tmp_path: Path) -> None:
    root = tmp_path / "in"
    root.mkdir()
    (root / "1.txt").write_text("one")
    op = await opened("io.dir_source", {"path": str(root), "poll": 0.02, "settle": 0}, tmp_path)
    seen: list[str] = []

    async def collect(gen: AsyncIterator[dict[str, Any]]) -> None:
        async for r in gen:
            seen.append(r["name"])

    task = asyncio.create_task(collect(op.generate()))
    try:
        await eventually(lambda: seen == ["1.txt"], what="the first file")
        (root / "2.txt").write_text("two")
        await eventually(lambda: seen == ["1.txt", "2.txt"], what="the new file")
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await op.close()


async def test_dir_source_waits_for_a_file_to_settle(tmp_path: Path) -> None:
    root = tmp_path / "in"
    root.mkdir()
    op = await opened("io.dir_source", {"path": str(root), "poll": 30, "settle": 60}, tmp_path)
    fresh = root / "growing.bin"
    fresh.write_bytes(b"x")
    rel, _path, size, mtime = op.scan()[0]
    assert not op._ready(rel, size, mtime)  # just written: wait for the next scan
    op._seen[rel] = (size, mtime)
    assert op._ready(rel, size, mtime)  # unchanged since the previous scan
    old = time_ago(fresh, 120)
    assert op._ready(rel, size, old)


def time_ago(path: Path, seconds: float) -> int:
    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns - int(seconds * 1e9)))
    return path.stat().st_mtime_ns


async def test_dir_source_missing_directory(tmp_path: Path) -> None:
    with pytest.raises(MissingPath, match=r"no directory .*nowhere on device edge-7"):
        await build("io.dir_source", {"path": str(tmp_path / "nowhere")}).open(ctx(tmp_path))
    (tmp_path / "f").write_text("x")
    with pytest.raises(NotADirectoryError, match="not a directory"):
        await build("io.dir_source", {"path": str(tmp_path / "f")}).open(ctx(tmp_path))


# ---------------------------------------------------------------------- io.dir_sink


def received(tmp_path: Path, name: str, data: bytes) -> dict[str, Any]:
    incoming = tmp_path / "incoming"
    incoming.mkdir(exist_ok=True)
    p = incoming / f"x-1-{name}"
    p.write_bytes(data)
    return {"path": str(p), "name": name, "size": len(data)}


async def test_dir_sink_moves_files_and_renames_on_conflict(tmp_path: Path) -> None:
    out = tmp_path / "out" / "deep"
    op = await opened("io.dir_sink", {"path": str(out)}, tmp_path)  # create: true by default
    first = received(tmp_path, "data.tar.gz", b"one")
    await op.process(first)
    await op.process(received(tmp_path, "data.tar.gz", b"two"))
    await op.process(received(tmp_path, "data.tar.gz", b"three"))
    assert not exists(first["path"])  # moved, not copied
    assert {p.name: p.read_bytes() for p in out.iterdir()} == {
        "data.tar.gz": b"one",
        "data-1.tar.gz": b"two",
        "data-2.tar.gz": b"three",
    }
    await op.close()


async def test_dir_sink_replace_and_fail(tmp_path: Path) -> None:
    out = tmp_path / "out"
    op = await opened("io.dir_sink", {"path": str(out), "conflict": "replace"}, tmp_path)
    await op.process(received(tmp_path, "a.txt", b"old"))
    await op.process(received(tmp_path, "a.txt", b"new"))
    assert [(p.name, p.read_bytes()) for p in out.iterdir()] == [("a.txt", b"new")]
    op = await opened("io.dir_sink", {"path": str(out), "conflict": "fail"}, tmp_path)
    with pytest.raises(FileExistsError, match=r"a.txt already exists on device edge-7"):
        await op.process(received(tmp_path, "a.txt", b"again"))
    assert [(p.name, p.read_bytes()) for p in out.iterdir()] == [("a.txt", b"new")]  # no temp left


async def test_dir_sink_copies_across_file_systems(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "out"
    op = await opened("io.dir_sink", {"path": str(out)}, tmp_path)

    def cross_device(src: Any, dst: Any) -> None:
        raise OSError(18, "Invalid cross-device link")

    monkeypatch.setattr(os, "rename", cross_device)
    rec = received(tmp_path, "x.bin", b"\x00" * 1000)
    await op.process(rec)
    assert (out / "x.bin").read_bytes() == b"\x00" * 1000
    assert exists(rec["path"])  # the runner deletes its copy


async def test_dir_sink_keeps_names_inside_its_directory(tmp_path: Path) -> None:
    assert safe_name("../../etc/passwd") == "passwd"
    assert safe_name("a\\..\\b.txt") == "b.txt"
    with pytest.raises(ValueError, match="no usable file name"):
        safe_name("..")
    assert numbered("data.tar.gz", 3) == "data-3.tar.gz"
    assert numbered(".env", 1) == ".env-1"
    assert numbered("README", 2) == "README-2"
    out = tmp_path / "out"
    op = await opened("io.dir_sink", {"path": str(out)}, tmp_path)
    rec = received(tmp_path, "ok.txt", b"x")
    await op.process({**rec, "name": "../../escape.txt"})
    assert [p.name for p in out.iterdir()] == ["escape.txt"]


async def test_dir_sink_without_create_needs_the_directory(tmp_path: Path) -> None:
    op = build("io.dir_sink", {"path": str(tmp_path / "missing"), "create": False})
    with pytest.raises(MissingPath, match="missing on device edge-7"):
        await op.open(ctx(tmp_path))


# ---------------------------------------------------------------------- core.split_lines, io.log_sink


async def test_split_lines(tmp_path: Path) -> None:
    op = await opened("core.split_lines", {"skip": 1}, tmp_path)
    rec = received(tmp_path, "t.csv", b"h1,h2\n1,2\r\n3,4")
    assert await op.process(rec) == [
        {"name": "t.csv", "n": 2, "line": "1,2"},
        {"name": "t.csv", "n": 3, "line": "3,4"},
    ]
    big = received(tmp_path, "big.txt", b"".join(b"%d\n" % i for i in range(5000)))
    out = await op.process(big)
    assert [r["n"] for r in out] == list(range(2, 5001))


async def test_log_sink_logs_every_nth(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    op = await opened("io.log_sink", {"every": 3, "max_chars": 30}, tmp_path)
    with caplog.at_level(logging.INFO, logger="echo.task"):
        for i in range(7):
            op.process({"seq": i, "pad": "x" * (50 if i == 6 else 1)})
    msgs = [r.getMessage() for r in caplog.records if r.name == "echo.task"]
    assert msgs[:2] == ['record 1: {"seq":0,"pad":"x"}', 'record 4: {"seq":3,"pad":"x"}']
    assert msgs[2].startswith('record 7: {"seq":6,"pad":"xxxxx') and msgs[2].endswith("chars)")
    assert len(msgs) == 3


# ---------------------------------------------------------------------- core.filter, core.map


def run(op: Any, records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return list(op.process_batch(records))


RECORDS: list[dict[str, Any]] = [{"seq": 0, "t": 35}, {"seq": 1, "t": 10}, {"seq": 2, "t": "hot"}, {"seq": 3}]


def test_filter_policies() -> None:
    op: Any = build("core.filter", {"where": "t > 30"})
    assert run(op, RECORDS) == [RECORDS[0]]
    assert (op.errors, op.dropped) == (1, 2)  # "hot" > 30 is an error; missing t > 30 is false
    keep = build("core.filter", {"where": "t > 30", "on_error": "keep"})
    assert [r["seq"] for r in run(keep, RECORDS)] == [0, 2]
    fail = build("core.filter", {"where": "t > 30", "on_error": "fail"})
    with pytest.raises(ExpressionFailed, match="'>' cannot order str and int"):
        run(fail, RECORDS)


def test_filter_logs_the_first_error_only(caplog: pytest.LogCaptureFixture) -> None:
    op: Any = build("core.filter", {"where": "t + 1 > 0"})
    with caplog.at_level(logging.WARNING, logger="echo.task"):
        run(op, [{"t": "a"}] * 5)
    assert op.errors == 5
    assert len([r for r in caplog.records if "failed" in r.getMessage()]) == 1


def test_map_sets_drops_and_keeps() -> None:
    op: Any = build("core.map", {"set": {"f": "t * 9 / 5 + 32", "hot": "t > 30"}, "drop": ["seq"]})
    assert run(op, RECORDS[:2]) == [{"t": 35, "f": 95.0, "hot": True}, {"t": 10, "f": 50.0, "hot": False}]
    assert op.errors == 0
    assert run(op, [RECORDS[2]]) == []  # "hot" * 9 / 5: an error, dropped by default
    assert op.errors == 1
    keep = build("core.map", {"set": {"u": "upper(str(t))"}, "keep": ["seq", "nope"]})
    assert run(keep, RECORDS[:1]) == [{"seq": 0, "u": "35"}]
    null = build("core.map", {"set": {"f": "t / 0", "s": "{1, 2}"}, "on_error": "null"})
    assert run(null, RECORDS[:1]) == [{"seq": 0, "t": 35, "f": None, "s": [1, 2]}]
    # every expression sees the input record, not the fields set before it
    swap = build("core.map", {"set": {"a": "b", "b": "a"}})
    assert run(swap, [{"a": 1, "b": 2}]) == [{"a": 2, "b": 1}]


# ---------------------------------------------------------------------- brokers without a URL, configs


@pytest.mark.parametrize(
    ("name", "config", "kind"),
    [
        ("io.mqtt_source", {"topic": "a/#"}, "MQTT"),
        ("io.mqtt_sink", {"topic": "a/b"}, "MQTT"),
        ("io.nats_source", {"subject": "a.>"}, "NATS"),
        ("io.nats_sink", {"subject": "a.b"}, "NATS"),
    ],
)
async def test_broker_operators_need_a_url(
    tmp_path: Path, name: str, config: dict[str, Any], kind: str
) -> None:
    op = build(name, config)
    with pytest.raises(BrokerUnreachable, match=f"device edge-7 has no {kind} URL"):
        await op.open(ctx(tmp_path, mqtt_url="", nats_url=None))


@pytest.mark.parametrize(
    ("name", "config", "loc", "msg"),
    [
        ("io.mqtt_source", {"topic": "a/#/b"}, "c.topic", "'#' must be a whole last level"),
        ("io.mqtt_source", {"topic": "a/b+"}, "c.topic", "'+' must be a whole level"),
        ("io.mqtt_source", {"topic": "a", "qos": 2}, "c.qos", "Input should be 0 or 1"),
        ("io.mqtt_source", {"topic": "a", "url": "http://x"}, "c.url", "not an MQTT URL"),
        ("io.mqtt_sink", {"topic": "a/+"}, "c.topic", "no wildcards"),
        ("io.mqtt_sink", {"topic": "a", "url": "mqtt://h:port"}, "c.url", "not an MQTT URL"),
        ("io.nats_source", {"subject": "a..b"}, "c.subject", "not a NATS subject"),
        ("io.nats_source", {"subject": "a.>.b"}, "c.subject", "'>' must be the last"),
        ("io.nats_sink", {"subject": "a.*"}, "c.subject", "no wildcards"),
        ("io.nats_sink", {"subject": "a", "url": "mqtt://x"}, "c.url", "not a NATS URL"),
        ("io.dir_source", {"path": "/x", "pattern": "a/*.csv"}, "c.pattern", "without '/'"),
        ("io.dir_source", {"path": "/x", "keep": False}, "c.keep", "Input should be True"),
        ("io.dir_sink", {"path": "/x", "conflict": "merge"}, "c.conflict", "'replace', 'fail' or 'rename'"),
        ("io.file_source", {"path": "/x", "encoding": "klingon"}, "c.encoding", "unknown text encoding"),
        ("io.file_source", {"path": ""}, "c.path", "at least 1 character"),
        ("io.file_source", {"path": "/x", "rate": -1}, "c.rate", "greater than or equal to 0"),
        ("io.log_sink", {"every": 0}, "c.every", "greater than or equal to 1"),
        ("core.filter", {"where": "x.__class__"}, "c.where", "not allowed: attribute '__class__'"),
        ("core.map", {"set": {"y": "lambda: 1"}}, "c.set.y", "not allowed: lambda"),
    ],
)
def test_config_problems_name_the_field(name: str, config: dict[str, Any], loc: str, msg: str) -> None:
    problems = config_problems(CATALOGUE[name], config, "c")
    assert problems, f"{name} accepted {config}"
    assert problems[0].loc == loc
    assert msg in problems[0].msg


def test_config_defaults() -> None:
    with pytest.raises(ValidationError):
        build("io.file_source", {})
    assert build("io.dir_source", {"path": "/x"}).config.poll is None
    assert build("io.dir_sink", {"path": "/x"}).config.conflict == "rename"
    assert build("io.mqtt_source", {"topic": "t"}).config.qos == 1
