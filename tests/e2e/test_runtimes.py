"""The process and container runtimes on the platform: placement by runtime, the three
process modes, and failures that name what went wrong (exit code, stderr, path, device).

Devices run external programs only when their agent enables the runtime (``--runtime
process``, ``AgentSpec.runtimes``), and run them as ``nobody`` when the agent is root, with
the safe ``PATH``: Python programs are the system's ``python3``. What the agent refuses and
how it confines programs: ``test_runtime_sandbox.py``."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import orjson
import pytest

from echo_agent.runtimes import container_runtime, onnx_runtime
from tests.conftest import THREE_TIERS, PlatformFactory
from tests.harness.api import Api
from tests.harness.programs import safe_python3
from tests.harness.waiting import wait_until

pytestmark = pytest.mark.e2e

safe_python3()  # the programs below run on it
PY = "python3"  # found on the program's PATH, as a deployer would write it
ONNX = {"onnx"} if onnx_runtime.available() is None else set()
# the three tiers, every agent with the process runtime enabled
PROCESS_TIERS = tuple(replace(s, runtimes=("process",)) for s in THREE_TIERS)

DOUBLE = (
    "import sys, json\n"
    "for line in sys.stdin:\n"
    "    r = json.loads(line)\n"
    "    print(json.dumps({'seq': r['seq'], 'double': 2 * r['seq']}))\n"
)
BATCH_SUM = (
    "import sys, json\n"
    "rows = [json.loads(l) for l in sys.stdin]\n"
    "print(json.dumps({'n': len(rows), 'sum': sum(r['seq'] for r in rows), 'first': rows[0]['seq']}))\n"
)


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [orjson.loads(line) for line in path.read_bytes().splitlines() if line.strip()]


def task(tid: str, operator: str, config: dict[str, Any], device: str) -> dict[str, Any]:
    return {"id": tid, "operator": operator, "config": config, "placement": {"device": device}}


def wait_failed(api: Api, df_id: str, timeout: float = 60) -> dict[str, Any]:
    def check() -> dict[str, Any] | None:
        df = api.dataflow(df_id)
        assert df["state"] not in ("completed", "running"), f"expected failure, got {df['state']}"
        return df if df["state"] == "failed" else None

    return wait_until(check, timeout=timeout, what=f"{df_id} failed")


def test_process_lines_and_batch_modes(platform_factory: PlatformFactory, tmp_path: Path) -> None:
    _platform, api = platform_factory(PROCESS_TIERS)
    assert {d: set(r["runtimes"]) for d, r in api.devices().items()} == {
        s.device_id: {"python", "process"} | ONNX for s in THREE_TIERS
    }

    lines_out, batch_out = tmp_path / "doubles.jsonl", tmp_path / "sums.jsonl"
    n = 2000
    df_id = api.submit(
        {
            "name": "process-modes",
            "tasks": [
                task("gen", "io.generate", {"count": n}, "edge-1"),
                task("double", "process", {"command": [PY, "-c", DOUBLE]}, "fog-1"),
                task("sum", "process", {"command": [PY, "-c", BATCH_SUM], "mode": "batch"}, "fog-1"),
                task("sink1", "io.file_sink", {"path": str(lines_out)}, "cloud-1"),
                task("sink2", "io.file_sink", {"path": str(batch_out)}, "cloud-1"),
            ],
            "edges": [
                {"from": "gen", "to": "double"},
                {"from": "gen", "to": "sum", "model": "batch", "batch": {"count": 500, "seconds": 5}},
                {"from": "double", "to": "sink1"},
                {"from": "sum", "to": "sink2"},
            ],
        }
    )
    df = api.wait_state(df_id, "completed", timeout=90)
    assert read_jsonl(lines_out) == [{"seq": i, "double": 2 * i} for i in range(n)]
    sums = read_jsonl(batch_out)
    assert sum(r["n"] for r in sums) == n and all(r["n"] <= 500 for r in sums)  # one run per batch
    assert sum(r["sum"] for r in sums) == n * (n - 1) // 2
    assert [r["first"] for r in sums] == sorted(r["first"] for r in sums)
    by_task = {t["id"]: t for t in df["tasks"]}
    assert by_task["double"]["records_in"] == n and by_task["double"]["records_out"] == n
    assert by_task["sum"]["records_out"] == len(sums)


def test_process_file_mode_between_file_edges(platform_factory: PlatformFactory, tmp_path: Path) -> None:
    inbox, outbox, sizes = tmp_path / "inbox", tmp_path / "outbox", tmp_path / "sizes.jsonl"
    inbox.mkdir()
    texts = {f"note-{i}.txt": f"note number {i}\n" * (i + 1) for i in range(6)}
    for name, text in texts.items():
        (inbox / name).write_text(text)
    upper = "import sys\nopen(sys.argv[2], 'w').write(open(sys.argv[1]).read().upper())\n"
    count = "import sys, json, os\nprint(json.dumps({'bytes': os.path.getsize(sys.argv[1])}))\n"
    _platform, api = platform_factory(PROCESS_TIERS)
    df_id = api.submit(
        {
            "name": "process-files",
            "tasks": [
                task("files", "io.dir_source", {"path": str(inbox), "pattern": "*.txt"}, "edge-1"),
                task(
                    "upper",
                    "process",
                    {
                        "command": [PY, "-c", upper, "{input}", "{output}"],
                        "mode": "file",
                        "output": "{stem}.upper{suffix}",
                    },
                    "fog-1",
                ),
                task("store", "io.dir_sink", {"path": str(outbox)}, "cloud-1"),
                task(
                    "count", "process", {"command": [PY, "-c", count, "{input}"], "mode": "file"}, "cloud-1"
                ),
                task("sink", "io.file_sink", {"path": str(sizes)}, "cloud-1"),
            ],
            "edges": [
                {"from": "files", "to": "upper", "model": "file"},
                {"from": "upper", "to": "store", "model": "file"},
                {"from": "files", "to": "count", "model": "file"},
                {"from": "count", "to": "sink"},
            ],
        }
    )
    api.wait_state(df_id, "completed", timeout=90)
    stored = {p.name: p.read_text() for p in outbox.iterdir()}
    assert stored == {name.replace(".txt", ".upper.txt"): text.upper() for name, text in texts.items()}
    assert {r["name"]: r["bytes"] for r in read_jsonl(sizes)} == {n: len(t) for n, t in texts.items()}


def test_failures_name_the_exit_code_stderr_path_and_device(
    platform_factory: PlatformFactory, tmp_path: Path
) -> None:
    _platform, api = platform_factory(PROCESS_TIERS)
    crash = "import sys\nsys.stdin.readline()\nsys.stderr.write('boom: record 0 is bad\\n')\nsys.exit(3)\n"

    def pipeline(name: str, operator: str, config: dict[str, Any]) -> str:
        return api.submit(
            {
                "name": name,
                "tasks": [
                    task("gen", "io.generate", {"count": 100, "fields": {"v": [1.0, 2.0]}}, "edge-1"),
                    task("step", operator, config, "fog-1"),
                    task("sink", "io.file_sink", {"path": str(tmp_path / f"{name}.jsonl")}, "cloud-1"),
                ],
                "edges": [{"from": "gen", "to": "step"}, {"from": "step", "to": "sink"}],
            }
        )

    crashed = pipeline("crash", "process", {"command": [PY, "-c", crash]})
    no_cwd = pipeline("no-cwd", "process", {"command": ["cat"], "cwd": "/nonexistent/work"})
    no_model = pipeline("no-model", "ml.onnx", {"model": "/models/missing.onnx", "inputs": {"x": "v"}})

    df = wait_failed(api, crashed)
    step = next(t for t in df["tasks"] if t["id"] == "step")
    assert step["state"] == "failed"
    assert "exited with code 3" in step["reason"] and "boom: record 0 is bad" in step["reason"]
    assert "task step failed on fog-1" in df["reason"] and "exited with code 3" in df["reason"]

    df = wait_failed(api, no_cwd)
    assert "cwd /nonexistent/work does not exist on device fog-1" in df["reason"]
    df = wait_failed(api, no_model)
    assert "model /models/missing.onnx does not exist on device fog-1" in df["reason"]


def test_container_enabled_without_an_engine_is_not_offered(
    platform_factory: PlatformFactory, tmp_path: Path
) -> None:
    nowhere = f"unix://{tmp_path}/no-docker.sock"
    # every agent enables the container runtime, but no engine answers where they look
    fleet = tuple(replace(s, runtimes=("process", "container")) for s in THREE_TIERS)
    platform, api = platform_factory(fleet, env={"DOCKER_HOST": nowhere})
    assert {d: set(r["runtimes"]) for d, r in api.devices().items()} == {
        s.device_id: {"python", "process"} | ONNX for s in THREE_TIERS
    }
    log = (platform.logs / "agent-fog-1.log").read_text()
    assert f"runtime 'container' is not available on device fog-1: no Docker engine at {nowhere}" in log
    df_id = api.submit(
        {
            "name": "no-engine",
            "tasks": [
                task("gen", "io.generate", {"count": 10}, "edge-1"),
                task("ctr", "container", {"image": "busybox:1.36", "command": ["cat"]}, "fog-1"),
                task("sink", "io.file_sink", {"path": str(tmp_path / "out.jsonl")}, "cloud-1"),
            ],
            "edges": [{"from": "gen", "to": "ctr"}, {"from": "ctr", "to": "sink"}],
        }
    )
    df = wait_failed(api, df_id)
    assert "cannot be placed" in df["reason"] and "runtime container" in df["reason"]


def test_container_task_is_not_placed_where_no_device_offers_the_runtime(
    platform_factory: PlatformFactory, tmp_path: Path
) -> None:
    # a complete list, as before --runtime enabled rather than listed: it means what it says
    _platform, api = platform_factory(env={"ECHO_RUNTIMES": '["python", "process", "onnx"]'})
    assert all(set(d["runtimes"]) == {"python", "process"} | ONNX for d in api.devices().values())
    df_id = api.submit(
        {
            "name": "no-container-runtime",
            "tasks": [
                {"id": "gen", "operator": "io.generate", "config": {"count": 10}},
                {"id": "ctr", "operator": "container", "config": {"image": "busybox:1.36"}},
            ],
            "edges": [{"from": "gen", "to": "ctr"}],
        }
    )
    df = wait_failed(api, df_id)
    assert "cannot be placed" in df["reason"] and "runtime container" in df["reason"]


def test_container_lines_mode_on_a_real_engine(platform_factory: PlatformFactory, tmp_path: Path) -> None:
    reason = container_runtime.available()
    if reason is not None:
        pytest.skip(f"no Docker engine: {reason}")
    out = tmp_path / "echoed.jsonl"
    _platform, api = platform_factory(tuple(replace(s, runtimes=("container",)) for s in THREE_TIERS))
    df_id = api.submit(
        {
            "name": "container-lines",
            "tasks": [
                task("gen", "io.generate", {"count": 50}, "edge-1"),
                task(
                    "ctr",
                    "container",
                    {"image": "busybox:1.36", "command": ["sh", "-c", 'while read -r l; do echo "$l"; done']},
                    "fog-1",
                ),
                task("sink", "io.file_sink", {"path": str(out)}, "cloud-1"),
            ],
            "edges": [{"from": "gen", "to": "ctr"}, {"from": "ctr", "to": "sink"}],
        }
    )
    api.wait_state(df_id, "completed", timeout=300)
    assert read_jsonl(out) == [{"seq": i} for i in range(50)]
