"""A task's resources enforced on its programs: sustained CPU above ``resources.cpu`` kills
the program and fails the task saying so; an allocation beyond ``resources.memory_mb``
fails it naming the memory limit; a program within its limits runs as before."""

from __future__ import annotations

import shutil
import signal
from pathlib import Path
from typing import Any

import pytest

from echo_agent.operators import TaskContext, build
from echo_agent.runtimes.limits import CpuWatch, limit_hit
from echo_agent.runtimes.sandbox import SAFE_PATH, Sandbox
from echo_agent.runtimes.stdio import RunFailed

PY = shutil.which("python3", path=SAFE_PATH) or "python3"
needs_python3 = pytest.mark.skipif(
    shutil.which("python3", path=SAFE_PATH) is None, reason=f"no python3 on {SAFE_PATH}"
)

SPIN = "import sys\nsys.stdin.read()\nwhile True:\n    pass\n"
HOG = "import sys\nsys.stdin.read()\nx = bytearray(1024 * 1024 * 1024)\nprint('{}')\n"
ECHO = "import sys\nfor line in sys.stdin:\n    print(line, end='')\n"


async def no_kill() -> None:
    raise AssertionError("not expected to kill")


def test_the_average_over_the_window_decides() -> None:
    watch = CpuWatch(0, 0.5, no_kill, window=10.0)
    # a 2 s burst at a full core inside 10 s: an average of 0.2 cores, allowed
    assert all(watch.sample(t, min(t, 2.0)) is None for t in range(11))
    # then a full core for good: past 0.8 (0.5 x 1.5 + 0.05) over the last 10 s
    reasons = [watch.sample(t, 2.0 + (t - 10)) for t in range(11, 25)]
    first = next(i for i, r in enumerate(reasons) if r is not None)
    assert reasons[first] == "cpu limit exceeded: 0.90 cores over 10 s, limit 0.5 (resources.cpu)"
    assert first + 11 == 19, "not when the average first passed the allowance"


def test_exits_that_show_a_limit() -> None:
    assert limit_hit(-signal.SIGXCPU, "", memory_mb=None, cpu_seconds_limit=600) == (
        "cpu time limit exceeded: 600 CPU seconds (ECHO_PROCESS_CPU_SECONDS)"
    )
    assert limit_hit(1, "Traceback ...\nMemoryError\n", memory_mb=256, cpu_seconds_limit=None) == (
        "memory limit exceeded: 256 MiB of address space (from resources.memory_mb)"
    )
    assert limit_hit(1, "MemoryError", memory_mb=None, cpu_seconds_limit=None) is None
    assert limit_hit(2, "usage: ...", memory_mb=256, cpu_seconds_limit=600) is None


def process(tmp_path: Path, command: list[str], *, cpu: float | None, memory_mb: int | None) -> Any:
    op = build("process", {"command": command, "mode": "batch"})
    op.confine(Sandbox.for_agent(quiet=True, cpu_window=2.0), memory_mb, cpu)
    return op


async def opened(op: Any, tmp_path: Path) -> Any:
    await op.open(TaskContext("df-1", "proc", "edge-7", 1, tmp_path / "task"))
    return op


@needs_python3
async def test_a_program_above_its_cpu_share_fails_the_task_saying_so(tmp_path: Path) -> None:
    op = await opened(process(tmp_path, [PY, "-c", SPIN], cpu=0.2, memory_mb=None), tmp_path)
    try:
        with pytest.raises(
            RunFailed, match=r"cpu limit exceeded: \d\.\d\d cores over [23] s, limit 0\.2 \(resources\.cpu\)"
        ):
            await op.process_batch([{"seq": 1}])
    finally:
        await op.close()


@needs_python3
async def test_a_program_beyond_its_memory_fails_the_task_saying_so(tmp_path: Path) -> None:
    op = await opened(process(tmp_path, [PY, "-c", HOG], cpu=None, memory_mb=64), tmp_path)
    try:
        with pytest.raises(RunFailed, match=r"memory limit exceeded: 256 MiB of address space"):
            await op.process_batch([{"seq": 1}])
    finally:
        await op.close()


@needs_python3
async def test_a_program_within_its_limits_runs(tmp_path: Path) -> None:
    op = await opened(process(tmp_path, [PY, "-c", ECHO], cpu=0.2, memory_mb=64), tmp_path)
    try:
        assert await op.process_batch([{"seq": i} for i in range(100)]) == [{"seq": i} for i in range(100)]
    finally:
        await op.close()
