"""A task's resources enforced on its programs: sustained CPU above ``resources.cpu`` kills
the program and fails the task saying so; an allocation beyond ``resources.memory_mb``
fails it naming the memory limit; a program within its limits runs as before."""

from __future__ import annotations

import signal
from pathlib import Path
from typing import Any

import pytest

from echo_agent.operators import TaskContext, build
from echo_agent.runtimes.limits import CpuWatch, limit_hit
from echo_agent.runtimes.sandbox import Sandbox
from echo_agent.runtimes.stdio import RunFailed, exit_text
from tests.harness.programs import safe_python3

PY = safe_python3()

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
    # what a failed allocation may end in, when the program has an address-space limit
    assert limit_hit(-signal.SIGSEGV, "", memory_mb=256, cpu_seconds_limit=600) == (
        "exited with signal SIGSEGV (memory limit 256 MiB of address space may have been exceeded)"
    )
    assert limit_hit(-signal.SIGKILL, "", memory_mb=None, cpu_seconds_limit=600) is None
    assert limit_hit(-signal.SIGTERM, "", memory_mb=256, cpu_seconds_limit=600) is None


def test_exits_name_their_signal() -> None:
    assert exit_text(3) == "exited with code 3"
    assert exit_text(-signal.SIGTERM) == "exited with signal SIGTERM"
    assert exit_text(-99) == "exited with signal signal 99"


def process(tmp_path: Path, command: list[str], *, cpu: float | None, memory_mb: int | None) -> Any:
    op = build("process", {"command": command, "mode": "batch"})
    op.confine(Sandbox.for_agent(quiet=True, cpu_window=2.0), memory_mb, cpu)
    return op


async def opened(op: Any, tmp_path: Path) -> Any:
    await op.open(TaskContext("df-1", "proc", "edge-7", 1, tmp_path / "task"))
    return op


async def test_a_program_above_its_cpu_share_fails_the_task_saying_so(tmp_path: Path) -> None:
    op = await opened(process(tmp_path, [PY, "-c", SPIN], cpu=0.2, memory_mb=None), tmp_path)
    try:
        with pytest.raises(
            RunFailed, match=r"cpu limit exceeded: \d\.\d\d cores over [23] s, limit 0\.2 \(resources\.cpu\)"
        ):
            await op.process_batch([{"seq": 1}])
    finally:
        await op.close()


async def test_a_program_beyond_its_memory_fails_the_task_saying_so(tmp_path: Path) -> None:
    op = await opened(process(tmp_path, [PY, "-c", HOG], cpu=None, memory_mb=64), tmp_path)
    try:
        with pytest.raises(RunFailed, match=r"memory limit exceeded: 256 MiB of address space"):
            await op.process_batch([{"seq": 1}])
    finally:
        await op.close()


async def test_a_program_within_its_limits_runs(tmp_path: Path) -> None:
    op = await opened(process(tmp_path, [PY, "-c", ECHO], cpu=0.2, memory_mb=64), tmp_path)
    try:
        assert await op.process_batch([{"seq": i} for i in range(100)]) == [{"seq": i} for i in range(100)]
    finally:
        await op.close()


def suicide(sig: signal.Signals) -> str:
    return f"import os, signal, sys\nsys.stdin.read()\nos.kill(os.getpid(), signal.{sig.name})\n"


async def test_a_program_killed_by_a_signal_names_it(tmp_path: Path) -> None:
    op = await opened(
        process(tmp_path, [PY, "-c", suicide(signal.SIGTERM)], cpu=None, memory_mb=64), tmp_path
    )
    try:
        with pytest.raises(RunFailed, match=r"exited with signal SIGTERM; no stderr output") as err:
            await op.process_batch([{"seq": 1}])
        assert err.value.code == -signal.SIGTERM
    finally:
        await op.close()
    op = await opened(
        process(tmp_path, [PY, "-c", suicide(signal.SIGSEGV)], cpu=None, memory_mb=64), tmp_path
    )
    try:
        with pytest.raises(
            RunFailed,
            match=r"exited with signal SIGSEGV \(memory limit 256 MiB of address space may have been "
            r"exceeded\)",
        ):
            await op.process_batch([{"seq": 1}])
    finally:
        await op.close()


async def test_a_lines_program_that_ends_killed_names_the_signal(tmp_path: Path) -> None:
    op = build("process", {"command": [PY, "-c", suicide(signal.SIGABRT)], "mode": "lines"})
    op.confine(Sandbox.for_agent(quiet=True), None, None)
    op = await opened(op, tmp_path)
    assert await op.process({"seq": 1}) == []
    with pytest.raises(RunFailed, match=r"exited with signal SIGABRT; no stderr output"):
        await op.close()
