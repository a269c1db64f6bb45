"""User operators run in worker processes: one that spins cannot stall the agent's loop,
one that dies fails its task with the reason, and none sees the agent's environment."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from echo_agent.operators.base import Operator, Record, TaskContext
from echo_agent.running import TaskRunner
from echo_agent.runtimes import python_runtime, workers
from echo_agent.runtimes.python_runtime import OperatorLoadError
from echo_agent.runtimes.workers import WorkerDied, WorkerError, WorkerOperator
from echo_cli.devstack import Brokers
from echo_shared.messages import Binding, TaskStatus
from echo_shared.models import TaskState
from echo_shared.names import Names
from tests.harness.waiting import eventually
from tests.integration.test_nats_channels import runner

OPS = "python:tests.harness.user_ops"


def ctx(tmp: Path, emitted: list[Record] | None = None) -> TaskContext:
    return TaskContext("df-w", "t", "dev", 1, tmp, emit=(emitted.extend if emitted is not None else None))


def worker_of(op: Operator) -> workers.Worker:
    assert isinstance(op, WorkerOperator)
    return op.worker


async def test_a_user_operator_runs_in_a_process_of_its_own(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ECHO_TEST_SECRET", "hunter2")
    op = workers.load(f"{OPS}:Upper", {})
    await op.open(ctx(tmp_path))
    assert await op.process({"name": "ada"}) == [{"name": "ADA"}]
    assert await op.process_batch([{"name": "a"}, {"name": "b"}]) == [{"name": "A"}, {"name": "B"}]
    assert await op.close() == []
    assert worker_of(op).proc.poll() is not None, "close() left the worker running"

    env = workers.load(f"{OPS}:Env", {})
    await env.open(ctx(tmp_path))
    (seen,) = await env.process({})
    await env.close()
    assert seen["secret"] is None, "the worker inherited the agent's environment"
    assert seen["pid"] != os.getpid() and seen["ppid"] == os.getpid()


async def lag_while(work: Any) -> float:
    """The longest the event loop went without running a 10 ms ticker while ``work`` ran."""
    worst = 0.0
    done = asyncio.Event()

    async def tick() -> None:
        nonlocal worst
        last = time.monotonic()
        while not done.is_set():
            await asyncio.sleep(0.01)
            now = time.monotonic()
            worst = max(worst, now - last - 0.01)
            last = now

    ticker = asyncio.create_task(tick())
    await asyncio.sleep(0)
    try:
        await work
    finally:
        done.set()
        await ticker
    return worst


async def test_the_agents_loop_keeps_ticking_while_an_operator_spins(tmp_path: Path) -> None:
    op = workers.load(f"{OPS}:Spin", {"seconds": 1.5})
    await op.open(ctx(tmp_path))
    t0 = time.monotonic()
    lag = await lag_while(op.process({"n": 1}))
    spun = time.monotonic() - t0
    await op.close()
    assert spun >= 1.5
    assert lag < 0.1, f"the loop stalled {lag * 1000:.0f} ms"
    # the same operator inside the agent (ECHO_PYTHON_WORKERS=0) stalls it for the whole spin
    inside = python_runtime.load(f"{OPS}:Spin", {"seconds": 0.5})

    async def in_the_agent() -> None:
        await asyncio.sleep(0.02)
        inside.process({"n": 1})

    lag_inside = await lag_while(in_the_agent())
    assert lag_inside >= 0.4, lag_inside


async def test_state_sources_and_timers_cross_the_boundary(tmp_path: Path) -> None:
    counter = workers.load(f"{OPS}:Counter", {})
    assert type(counter).stateful is True
    counter.restore({"n": 41})
    await counter.open(ctx(tmp_path))
    assert await counter.process({}) == [{"count": 42}]
    assert counter.snapshot() == {"n": 42}
    await counter.close()

    ticks = workers.load(f"{OPS}:Ticks", {"count": 250})
    await ticks.open(ctx(tmp_path))
    got = [r["i"] async for r in ticks.generate()]  # type: ignore[attr-defined]
    await ticks.close()
    assert got == list(range(250))

    emitted: list[Record] = []
    timer = workers.load(f"{OPS}:Timer", {})
    await timer.open(ctx(tmp_path, emitted))
    await eventually(lambda: emitted, timeout=10, what="a record emitted by the worker's timer")
    await timer.close()
    assert emitted == [{"tick": True}]


async def test_errors_name_the_operator_and_the_method(tmp_path: Path) -> None:
    boom = workers.load(f"{OPS}:Boom", {})
    await boom.open(ctx(tmp_path))
    with pytest.raises(WorkerError, match=r"user_ops:Boom\.process\(\) raised ValueError: cannot take"):
        await boom.process({"x": 1})
    await boom.close()
    with pytest.raises(OperatorLoadError, match=r"cannot import tests\.harness\.nope"):
        workers.load("python:tests.harness.nope:X", {})
    with pytest.raises(OperatorLoadError, match="does not implement the operator API"):
        workers.load(f"{OPS}:NotAnOperator", {})
    with pytest.raises(OperatorLoadError, match="seconds"):
        workers.load(f"{OPS}:Spin", {"seconds": "long"})
    with pytest.raises(ValidationError):  # the same config inside the agent
        python_runtime.load(f"{OPS}:Spin", {"seconds": "long"})


async def test_a_worker_killed_mid_call_fails_it_with_the_signal(tmp_path: Path) -> None:
    op = workers.load(f"{OPS}:Spin", {"seconds": 60})
    await op.open(ctx(tmp_path))
    call = asyncio.create_task(op.process({}))
    await asyncio.sleep(0)
    os.kill(worker_of(op).proc.pid, signal.SIGKILL)
    with pytest.raises(WorkerDied, match="killed by signal SIGKILL"):
        await asyncio.wait_for(call, 10)
    with pytest.raises(WorkerDied):
        await op.process({})
    with pytest.raises(WorkerDied):
        await op.close()
    assert worker_of(op).proc.poll() is not None


async def test_a_task_of_a_spinning_operator_on_real_brokers(
    brokers: Brokers, names: Names, tmp_path: Path
) -> None:
    """Through the task runner, as the agent runs it: the records go through, the loop is free."""
    subject = names.data_subject("df-nats", "gen", "spin")
    out = tmp_path / "out.jsonl"
    to_sink = names.data_subject("df-nats", "spin", "sink")
    statuses: list[TaskStatus] = []

    def task(
        name: str, op: str, config: dict[str, Any], ins: list[Binding], outs: list[Binding]
    ) -> TaskRunner:
        return runner(brokers, names, tmp_path, name, op, config, ins, outs, statuses)

    gen = task("gen", "io.generate", {"count": 4}, [], [Binding(peer="spin", topic=subject)])
    spin = task(
        "spin",
        f"{OPS}:Spin",
        {"seconds": 0.4},
        [Binding(peer="gen", topic=subject)],
        [Binding(peer="sink", topic=to_sink)],
    )
    sink = task("sink", "io.file_sink", {"path": str(out)}, [Binding(peer="spin", topic=to_sink)], [])
    for r in (sink, spin, gen):
        await r.start()
    try:
        assert isinstance(spin.op, WorkerOperator)
        lag = await lag_while(
            eventually(lambda: sink.state is TaskState.finished, timeout=60, what="the sink finishing")
        )
        assert lag < 0.1, f"the loop stalled {lag * 1000:.0f} ms"
        assert out.read_text().count('"spun":true') == 4
        assert spin.state is TaskState.finished
    finally:
        for r in (gen, spin, sink):
            await r.stop(discard_session=True)
