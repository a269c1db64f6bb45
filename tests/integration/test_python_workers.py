"""User operators run in worker processes: one that spins at 100 % CPU cannot stall the
agent's loop, one whose worker dies fails its task with the reason, a task stopped while
its operator spins leaves no process behind, and none sees the agent's environment.

The lag is measured by a ticker coroutine on the loop that runs the task runners (the
agent's loop): the longest it went without running, beyond its 10 ms sleep."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import orjson
import psutil
import pytest

from echo_agent.operators.base import Operator, Record, TaskContext
from echo_agent.running import TaskRunner
from echo_agent.runtimes import python_runtime, workers
from echo_agent.runtimes.workers import WorkerOperator
from echo_cli.devstack import Brokers
from echo_shared.messages import Binding, TaskStatus
from echo_shared.models import TaskState
from echo_shared.names import Names
from tests.harness.waiting import eventually
from tests.integration.test_nats_channels import runner as nats_runner

OPS = "python:tests.harness.user_ops"
log = logging.getLogger(__name__)


def ctx(tmp: Path, emitted: list[Record] | None = None) -> TaskContext:
    return TaskContext("df-w", "t", "dev", 1, tmp, emit=(emitted.extend if emitted is not None else None))


def proxy(op: Operator | None) -> WorkerOperator:
    assert isinstance(op, WorkerOperator), type(op)
    return op


def gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


async def lag_while(work: Any) -> float:
    """The longest the event loop went without running a 10 ms ticker while ``work`` ran."""
    worst = 0.0
    done, ticking = asyncio.Event(), asyncio.Event()

    async def tick() -> None:
        nonlocal worst
        last = time.monotonic()
        while not done.is_set():
            await asyncio.sleep(0.01)
            now = time.monotonic()
            worst = max(worst, now - last - 0.01)
            last = now
            ticking.set()

    ticker = asyncio.create_task(tick())
    try:
        await ticking.wait()  # ``work`` (a coroutine) starts once the ticker runs
        await work
    finally:
        done.set()
        await ticker
    return worst


async def test_a_user_operator_runs_in_a_process_of_its_own(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ECHO_TEST_SECRET", "hunter2")
    env = workers.load(f"{OPS}:Env", {})
    await env.open(ctx(tmp_path))
    (seen,) = await env.process({})
    await env.close()
    assert seen["secret"] is None, "the worker inherited the agent's environment"
    assert seen["pid"] != os.getpid() and seen["ppid"] == os.getpid()


async def test_the_agents_loop_keeps_ticking_while_an_operator_spins(tmp_path: Path) -> None:
    op = workers.load(f"{OPS}:Spin", {"seconds": 2.0})
    await op.open(ctx(tmp_path))
    t0 = time.monotonic()
    lag = await lag_while(op.process({"n": 1}))
    spun = time.monotonic() - t0
    await op.close()
    log.info("loop lag while a worker spun %.1f s: %.1f ms", spun, lag * 1000)
    assert spun >= 2.0
    assert lag < 0.1, f"the loop stalled {lag * 1000:.0f} ms"
    # the same operator inside the agent (ECHO_PYTHON_WORKERS=0) stalls it for the whole spin
    inside = python_runtime.load(f"{OPS}:Spin", {"seconds": 0.5})

    async def in_the_agent() -> None:
        inside.process({"n": 1})

    lag_inside = await lag_while(in_the_agent())
    log.info("loop lag while the same operator spun 0.5 s in the agent: %.1f ms", lag_inside * 1000)
    assert lag_inside >= 0.4, lag_inside


class Flow:
    """io.generate -> python:Spin -> io.file_sink, as an agent runs them (task runners on
    this loop, real brokers)."""

    def __init__(self, brokers: Brokers, names: Names, tmp: Path, spin: dict[str, Any], count: int) -> None:
        self.statuses: list[TaskStatus] = []
        self.out = tmp / "out.jsonl"
        self.mark = tmp / "spinning"  # touched when the operator starts spinning
        to_spin = names.data_subject("df-nats", "gen", "spin")
        to_sink = names.data_subject("df-nats", "spin", "sink")

        def runner(
            task: str, operator: str, config: dict[str, Any], ins: list[Binding], outs: list[Binding]
        ) -> TaskRunner:
            return nats_runner(brokers, names, tmp, task, operator, config, ins, outs, self.statuses)

        self.gen = runner("gen", "io.generate", {"count": count}, [], [Binding(peer="spin", topic=to_spin)])
        self.spin = runner(
            "spin",
            f"{OPS}:Spin",
            {**spin, "mark": str(self.mark)},
            [Binding(peer="gen", topic=to_spin)],
            [Binding(peer="sink", topic=to_sink)],
        )
        self.sink = runner(
            "sink", "io.file_sink", {"path": str(self.out)}, [Binding(peer="spin", topic=to_sink)], []
        )

    async def start(self) -> None:
        for r in (self.sink, self.spin, self.gen):
            await r.start()
            assert r.state is TaskState.running, r.reason

    async def stop(self) -> None:
        for r in (self.gen, self.spin, self.sink):
            await r.stop(discard_session=True)


@pytest.fixture
async def flow(
    request: pytest.FixtureRequest, brokers: Brokers, names: Names, tmp_path: Path
) -> AsyncIterator[Flow]:
    spin, count = request.param
    f = Flow(brokers, names, tmp_path, spin, count)
    try:
        yield f
    finally:
        await f.stop()


@pytest.mark.parametrize("flow", [({"seconds": 0.4}, 4)], indirect=True)
async def test_a_task_of_a_spinning_operator_on_real_brokers(flow: Flow) -> None:
    """Deployed, run to the end and finished as the agent runs it: the loop stays free."""

    async def everything() -> None:
        await flow.start()
        assert isinstance(flow.spin.op, WorkerOperator)
        await eventually(lambda: flow.sink.state is TaskState.finished, timeout=60, what="the sink finishing")

    t0 = time.monotonic()
    lag = await lag_while(everything())
    log.info(
        "loop lag over a flow whose operator spun 4 x 0.4 s (%.1f s): %.1f ms",
        time.monotonic() - t0,
        lag * 1000,
    )
    assert lag < 0.1, f"the loop stalled {lag * 1000:.0f} ms"
    assert flow.out.read_text().count('"spun":true') == 4
    assert flow.spin.state is TaskState.finished


@pytest.mark.parametrize("flow", [({"seconds": 3600}, 1)], indirect=True)
async def test_a_task_whose_worker_is_killed_fails_naming_the_signal(flow: Flow) -> None:
    await flow.start()
    worker = proxy(flow.spin.op).worker
    await eventually(flow.mark.exists, timeout=30, what="the operator spinning")
    os.kill(worker.pid, signal.SIGKILL)
    await eventually(lambda: flow.spin.state is TaskState.failed, timeout=10, what="the task failing")
    assert flow.spin.reason == (
        "WorkerDied: the worker process of tests.harness.user_ops:Spin was killed by signal SIGKILL"
    )
    assert flow.statuses[-1].state is TaskState.failed and "SIGKILL" in flow.statuses[-1].reason
    assert gone(worker.pid)


@pytest.mark.parametrize("flow", [({"seconds": 3600}, 1)], indirect=True)
async def test_a_task_stopped_while_it_spins_leaves_no_process(flow: Flow) -> None:
    await flow.start()
    worker = proxy(flow.spin.op).worker
    await eventually(flow.mark.exists, timeout=30, what="the operator spinning")
    t0 = time.monotonic()
    lag = await lag_while(flow.spin.stop(discard_session=True, reason="stopped by the master"))
    took = time.monotonic() - t0
    log.info("stopping a task mid-spin took %.2f s, loop lag %.1f ms", took, lag * 1000)
    assert flow.spin.state is TaskState.stopped
    assert took < 5.0, f"stop() took {took:.1f} s"
    assert lag < 0.1, f"the loop stalled {lag * 1000:.0f} ms"
    assert gone(worker.pid)
    assert not [p for p in psutil.Process().children(recursive=True) if p.pid == worker.pid]


async def test_a_built_in_that_asked_for_a_worker_runs_there_on_real_brokers(
    brokers: Brokers, names: Names, tmp_path: Path
) -> None:
    """``resources.worker``: core.map in a worker process between two tasks of the agent's
    loop, every record once and in order, and the worker ends with its task."""
    statuses: list[TaskStatus] = []
    to_map, to_sink = (
        names.data_subject("df-nats", "gen", "map"),
        names.data_subject("df-nats", "map", "sink"),
    )
    out = tmp_path / "out.jsonl"
    sink = nats_runner(
        brokers,
        names,
        tmp_path,
        "sink",
        "io.file_sink",
        {"path": str(out)},
        [Binding(peer="map", topic=to_sink)],
        [],
        statuses,
    )
    mapper = nats_runner(
        brokers,
        names,
        tmp_path,
        "map",
        "core.map",
        {"set": {"double": "seq * 2"}},
        [Binding(peer="gen", topic=to_map)],
        [Binding(peer="sink", topic=to_sink)],
        statuses,
        resources={"worker": True},
    )
    gen = nats_runner(
        brokers,
        names,
        tmp_path,
        "gen",
        "io.generate",
        {"count": 3000},
        [],
        [Binding(peer="map", topic=to_map)],
        statuses,
    )
    runners = (sink, mapper, gen)
    try:
        for r in runners:
            await r.start()
            assert r.state is TaskState.running, r.reason
        worker = proxy(mapper.op).worker
        assert psutil.Process(worker.pid).ppid() == os.getpid()
        await eventually(lambda: sink.state is TaskState.finished, timeout=60, what="the sink finishing")
        got = [orjson.loads(x) for x in out.read_bytes().splitlines()]
        assert [r["seq"] for r in got] == list(range(3000))
        assert all(r["double"] == 2 * r["seq"] for r in got)
        await eventually(lambda: gone(worker.pid), timeout=10, what="the worker ending with its task")
    finally:
        for r in reversed(runners):
            await r.stop(discard_session=True)
