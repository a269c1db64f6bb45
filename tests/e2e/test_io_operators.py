"""IO operators and the expression operators on the platform, across devices."""

from __future__ import annotations

import hashlib
import itertools
import os
from pathlib import Path
from typing import Any

import orjson
import pytest

from tests.conftest import PlatformFactory

pytestmark = pytest.mark.e2e

CITIES = ["nyc", "la", "sf", "chi"]


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [orjson.loads(line) for line in path.read_bytes().splitlines() if line.strip()]


def task(tid: str, operator: str, device: str, **config: Any) -> dict[str, Any]:
    return {"id": tid, "operator": operator, "config": config, "placement": {"device": device}}


def chain(name: str, tasks: list[dict[str, Any]], model: str = "stream") -> dict[str, Any]:
    edges = [{"from": a["id"], "to": b["id"], "model": model} for a, b in itertools.pairwise(tasks)]
    return {"name": name, "tasks": tasks, "edges": edges}


def test_file_source_filter_map_file_sink(platform_factory: PlatformFactory, tmp_path: Path) -> None:
    _platform, api = platform_factory()
    src = tmp_path / "readings.csv"
    rows = [(i, CITIES[i % 4], (i * 7) % 40) for i in range(2000)]
    src.write_text("id,city,temp\n" + "".join(f"{i},{c},{t}\n" for i, c, t in rows), encoding="utf-8")
    out = tmp_path / "hot.jsonl"
    spec = chain(
        "io-expr",
        [
            task("read", "io.file_source", "edge-1", path=str(src), skip=1),
            task("hot", "core.filter", "fog-1", where="int(split(line, ',')[2]) >= 30 and 'a' not in line"),
            task(
                "shape",
                "core.map",
                "fog-1",
                set={
                    "id": "int(split(line, ',')[0])",
                    "city": "upper(split(line, ',')[1])",
                    "f": "int(split(line, ',')[2]) * 9 / 5 + 32",
                },
                drop=["line"],
            ),
            task("sink", "io.file_sink", "cloud-1", path=str(out)),
        ],
    )
    df_id = api.submit(spec)
    df = api.wait_state(df_id, "completed", timeout=60)
    expected = [
        {"seq": i, "id": i, "city": c.upper(), "f": t * 9 / 5 + 32}
        for i, c, t in rows
        if t >= 30 and "a" not in c
    ]
    assert 0 < len(expected) < len(rows)
    assert read_jsonl(out) == expected
    by_task = {t["id"]: t for t in df["tasks"]}
    assert by_task["hot"]["records_in"] == len(rows)
    assert by_task["sink"]["records_in"] == len(expected)


def test_a_bad_expression_is_a_422_naming_the_field(
    platform_factory: PlatformFactory, tmp_path: Path
) -> None:
    _platform, api = platform_factory()
    spec = chain(
        "bad-expr",
        [
            task("read", "io.file_source", "edge-1", path=str(tmp_path / "x")),
            task("hot", "core.filter", "fog-1", where="__import__('os').system('true')"),
            task("sink", "io.log_sink", "cloud-1"),
        ],
    )
    r = api.http.post("/api/v1/dataflows", json=spec)
    assert r.status_code == 422, r.text
    errors = r.json()["errors"]
    assert errors[0]["loc"] == "tasks[1].config.where"
    assert "only functions can be called" in errors[0]["msg"]


def test_a_missing_input_file_fails_the_dataflow_naming_path_and_device(
    platform_factory: PlatformFactory, tmp_path: Path
) -> None:
    _platform, api = platform_factory()
    missing = tmp_path / "nowhere" / "input.csv"
    spec = chain(
        "missing",
        [
            task("read", "io.file_source", "edge-1", path=str(missing)),
            task("sink", "io.log_sink", "cloud-1"),
        ],
    )
    df = api.wait_state(api.submit(spec), "failed", timeout=30)
    assert str(missing) in df["reason"]
    assert "edge-1" in df["reason"]


def make_files(root: Path) -> dict[str, bytes]:
    root.mkdir(parents=True)
    files = {
        "empty.bin": b"",
        "small.txt": b"hello\n",
        "big.bin": os.urandom(3 * 1024 * 1024 + 17),  # many chunks
        "skip.tmp": b"not matched",
    }
    for name, data in files.items():
        (root / name).write_bytes(data)
    return {k: v for k, v in files.items() if not k.endswith(".tmp")}


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_dir_source_file_edge_dir_sink(platform_factory: PlatformFactory, tmp_path: Path) -> None:
    _platform, api = platform_factory()
    src, dst = tmp_path / "in", tmp_path / "out"
    files = make_files(src)
    dst.mkdir()
    (dst / "small.txt").write_bytes(b"already here")  # conflict: renamed
    spec = chain(
        "files",
        [
            task("scan", "io.dir_source", "edge-1", path=str(src), pattern="*.[bt][ix][nt]"),
            task("store", "io.dir_sink", "cloud-1", path=str(dst)),
        ],
        model="file",
    )
    api.wait_state(api.submit(spec), "completed", timeout=60)
    stored = {p.name: p for p in dst.iterdir()}
    assert sorted(stored) == ["big.bin", "empty.bin", "small-1.txt", "small.txt"]
    assert stored["small.txt"].read_bytes() == b"already here"
    assert stored["small-1.txt"].read_bytes() == files["small.txt"]
    assert digest(stored["big.bin"]) == hashlib.sha256(files["big.bin"]).hexdigest()
    assert stored["empty.bin"].read_bytes() == b""
    assert sorted(p.name for p in src.iterdir()) == ["big.bin", "empty.bin", "skip.tmp", "small.txt"]  # kept


def test_dir_source_file_edge_split_lines(platform_factory: PlatformFactory, tmp_path: Path) -> None:
    _platform, api = platform_factory()
    src = tmp_path / "logs"
    src.mkdir()
    (src / "a.log").write_text("h\n" + "".join(f"a{i}\n" for i in range(300)))
    (src / "b.log").write_text("h\nb0\nb1")
    out = tmp_path / "lines.jsonl"
    spec = {
        "name": "split",
        "tasks": [
            task("scan", "io.dir_source", "edge-1", path=str(src)),
            task("split", "core.split_lines", "fog-1", skip=1),
            task("sink", "io.file_sink", "cloud-1", path=str(out)),
        ],
        "edges": [{"from": "scan", "to": "split", "model": "file"}, {"from": "split", "to": "sink"}],
    }
    api.wait_state(api.submit(spec), "completed", timeout=60)
    expected = [{"name": "a.log", "n": i + 2, "line": f"a{i}"} for i in range(300)]
    expected += [{"name": "b.log", "n": 2, "line": "b0"}, {"name": "b.log", "n": 3, "line": "b1"}]
    assert read_jsonl(out) == expected
