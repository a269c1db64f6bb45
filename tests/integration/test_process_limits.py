"""A ``process`` task's resources enforced as the agent runs it (task runner, real brokers):
a program above its ``resources.cpu`` or beyond its ``resources.memory_mb`` fails its task
with the limit as the reason; one within them runs to the end. (This machine's cgroups
decide how: with cgroups v2 delegated to the agent the CPU is throttled instead; the
sandbox here is built without them, so the rlimits and the CPU watch are what is tested.)"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from echo_agent.running import TaskRunner
from echo_agent.runtimes.gating import RuntimePolicy
from echo_agent.runtimes.sandbox import Sandbox
from echo_cli.devstack import Brokers
from echo_shared.messages import Binding, DeployTask, TaskStatus
from echo_shared.models import Resources, TaskState
from echo_shared.names import Names
from tests.harness.programs import safe_python3
from tests.harness.waiting import eventually

PY = safe_python3()

SPIN = "import sys\nfor line in sys.stdin:\n    pass\nwhile True:\n    pass\n"
HOG = "import sys\nsys.stdin.read()\nx = bytearray(1024 * 1024 * 1024)\nprint('{}')\n"
ECHO = "import sys\nfor line in sys.stdin:\n    print(line, end='')\n"


def runners(
    brokers: Brokers, names: Names, tmp_path: Path, program: str, resources: Resources
) -> tuple[TaskRunner, TaskRunner, TaskRunner, Path]:
    """io.generate -> a process task (batch mode) -> io.file_sink, as an agent offering
    ``process`` runs them (CPU averaged over 2 s instead of 10)."""
    assert PY is not None
    df = f"df-{uuid.uuid4().hex[:6]}"
    to_proc, to_sink = names.data_subject(df, "gen", "proc"), names.data_subject(df, "proc", "sink")
    out = tmp_path / "out.jsonl"
    sandbox = Sandbox.for_agent(quiet=True, cpu_window=2.0)
    build = RuntimePolicy.decide("dev", ["process"], sandbox=sandbox).build
    statuses: list[TaskStatus] = []

    def runner(
        task: str, operator: str, config: dict[str, Any], ins: list[Binding], outs: list[Binding]
    ) -> TaskRunner:
        cmd = DeployTask(
            cmd_id=uuid.uuid4().hex,
            dataflow=df,
            task=task,
            generation=1,
            operator=operator,
            config=config,
            resources=resources if operator == "process" else Resources(),
            inputs=ins,
            outputs=outs,
        )
        return TaskRunner(
            cmd,
            device="dev",
            mqtt_url=brokers.mqtt_url,
            names=names,
            data_dir=tmp_path / task,
            report=statuses.append,
            session_expiry=60,
            nats_url=brokers.nats_url,
            access=brokers.access(),
            build=build,
        )

    gen = runner("gen", "io.generate", {"count": 20}, [], [Binding(peer="proc", topic=to_proc)])
    proc = runner(
        "proc",
        "process",
        {"command": [PY, "-c", program], "mode": "batch", "timeout": 60},
        [Binding(peer="gen", topic=to_proc)],
        [Binding(peer="sink", topic=to_sink)],
    )
    sink = runner("sink", "io.file_sink", {"path": str(out)}, [Binding(peer="proc", topic=to_sink)], [])
    return gen, proc, sink, out


async def run_until(runners_: tuple[TaskRunner, ...], done: Callable[[], bool], timeout: float) -> None:
    for r in reversed(runners_):
        await r.start()
    try:
        await eventually(done, timeout=timeout, what="the task's end")
    finally:
        for r in runners_:
            await r.stop(discard_session=True)


async def test_a_process_task_beyond_its_memory_fails_saying_so(
    brokers: Brokers, names: Names, tmp_path: Path
) -> None:
    gen, proc, sink, _ = runners(brokers, names, tmp_path, HOG, Resources(cpu=1, memory_mb=64))
    await run_until((gen, proc, sink), lambda: proc.state is TaskState.failed, timeout=60)
    assert "memory limit exceeded: 256 MiB of address space (from resources.memory_mb)" in proc.reason


async def test_a_process_task_above_its_cpu_fails_within_the_window(
    brokers: Brokers, names: Names, tmp_path: Path
) -> None:
    gen, proc, sink, _ = runners(brokers, names, tmp_path, SPIN, Resources(cpu=0.2, memory_mb=64))
    await run_until((gen, proc, sink), lambda: proc.state is TaskState.failed, timeout=30)
    assert "cpu limit exceeded: " in proc.reason and "limit 0.2 (resources.cpu)" in proc.reason, proc.reason


async def test_a_process_task_within_its_limits_runs_to_the_end(
    brokers: Brokers, names: Names, tmp_path: Path
) -> None:
    gen, proc, sink, out = runners(brokers, names, tmp_path, ECHO, Resources(cpu=0.2, memory_mb=64))
    await run_until((gen, proc, sink), lambda: sink.state is TaskState.finished, timeout=60)
    assert proc.state is TaskState.finished, proc.reason
    assert len(out.read_text().splitlines()) == 20
