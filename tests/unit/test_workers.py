"""The worker host of user operators (``echo_agent.runtimes.workers``): its frames, the
environment a worker gets, and the proxy's forwarding of the operator API to a real worker
process (no brokers: the operator is driven as the task runner would drive it)."""

from __future__ import annotations

import asyncio
import io
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import psutil
import pytest

from echo_agent.operators.base import Operator, Record, TaskContext
from echo_agent.runtimes import RuntimePolicy, RuntimeRefused, python_runtime, workers
from echo_agent.runtimes.python_runtime import OperatorLoadError
from echo_agent.runtimes.workers import WorkerDied, WorkerError, WorkerOperator
from echo_agent.runtimes.workers_wire import (
    FRAME,
    BadFrame,
    describe_exit,
    encode,
    read_frame,
    worker_env,
)
from echo_agent.settings import AgentSettings
from echo_shared.messages import DeployTask
from tests.harness.waiting import eventually, wait_until

OPS = "python:tests.harness.user_ops"
REPO = Path(__file__).resolve().parents[2]


def ctx(tmp: Path, emitted: list[Record] | None = None) -> TaskContext:
    return TaskContext("df-w", "t", "dev", 1, tmp, emit=(emitted.extend if emitted is not None else None))


def proxy(op: Operator) -> WorkerOperator:
    assert isinstance(op, WorkerOperator), type(op)
    return op


def gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def workers_running() -> set[int]:
    """The worker processes this process has now."""
    pids = set()
    for p in psutil.Process().children():
        try:
            if "echo_agent.runtimes.worker_main" in p.cmdline() and p.status() != psutil.STATUS_ZOMBIE:
                pids.add(p.pid)
        except psutil.Error:  # gone meanwhile
            pass
    return pids


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


# ---------------------------------------------------------------------- the wire


def test_frames_round_trip_and_a_cut_stream_ends() -> None:
    data = encode({"id": 1, "op": "process", "record": {"name": "ada", "n": [1, 2.5, None]}})
    assert FRAME.unpack(data[: FRAME.size]) == (len(data) - FRAME.size,)
    stream = io.BytesIO(data + encode({"emit": []}))
    assert read_frame(stream) == {"id": 1, "op": "process", "record": {"name": "ada", "n": [1, 2.5, None]}}
    assert read_frame(stream) == {"emit": []}
    assert read_frame(stream) is None
    assert read_frame(io.BytesIO(data[:-1])) is None  # the writer died mid-frame
    with pytest.raises(BadFrame, match="a frame of"):
        read_frame(io.BytesIO(FRAME.pack(2**30)))
    with pytest.raises(BadFrame, match="no JSON"):
        read_frame(io.BytesIO(FRAME.pack(3) + b"{x}"))
    with pytest.raises(TypeError):
        encode({"raw": b"bytes"})


def test_a_worker_gets_a_minimal_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    agent_env = {
        "HOME": "/home/agent",
        "PATH": "/opt/evil/bin:/usr/bin",
        "ECHO_MQTT_URL": "mqtts://agent:secret@broker",
        "ECHO_TOKEN_FILE": "/etc/echo/token",
        "AWS_SECRET_ACCESS_KEY": "x",
        "LD_PRELOAD": "/tmp/x.so",
    }
    monkeypatch.chdir(tmp_path)
    env = worker_env(agent_env, ["", str(REPO), "/no/such/dir", str(REPO)])
    assert set(env) == {"PATH", "HOME", "LANG", "LC_ALL", "PYTHONPATH", "PYTHONUNBUFFERED"}
    assert env["HOME"] == "/home/agent" and "/opt/evil" not in env["PATH"]
    assert env["PYTHONPATH"].split(os.pathsep) == [str(tmp_path), str(REPO)]  # cwd first, once each


def test_exits_are_described() -> None:
    assert describe_exit(3) == "exited with code 3"
    assert describe_exit(-signal.SIGKILL) == "was killed by signal SIGKILL"
    assert describe_exit(-signal.SIGSEGV) == "was killed by signal SIGSEGV"


async def test_the_setting_chooses_where_user_operators_run(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ECHO_PYTHON_WORKERS", "0")
    assert AgentSettings(device_id="e", tier="edge").python_workers is False
    monkeypatch.delenv("ECHO_PYTHON_WORKERS")
    assert AgentSettings(device_id="e", tier="edge").python_workers is True
    cmd = DeployTask(cmd_id="c", dataflow="df", task="t", generation=1, operator=f"{OPS}:Upper", config={})
    inside = RuntimePolicy.decide("e", python_workers=False).build(cmd)
    assert type(inside).__name__ == "Upper"
    outside = proxy(RuntimePolicy.decide("e").build(cmd))
    assert await outside.close() == []
    assert outside.worker.exited.is_set()


# ---------------------------------------------------------------------- the proxy


async def test_calls_are_forwarded_and_errors_name_the_method(tmp_path: Path) -> None:
    op = proxy(workers.load(f"{OPS}:Upper", {}))
    assert type(op).wants_batches, "one round trip per micro-batch"
    await op.open(ctx(tmp_path))
    assert await op.process({"name": "ada"}) == [{"name": "ADA"}]
    assert await op.process_batch([{"name": "a"}, {"name": "b"}]) == [{"name": "A"}, {"name": "B"}]
    with pytest.raises(WorkerError, match="cannot send its input"):
        await op.process({"name": b"bytes"})
    assert await op.close() == []
    assert op.worker.proc.returncode == 0, "close() ends the worker"

    boom = workers.load(f"{OPS}:Boom", {})
    await boom.open(ctx(tmp_path))
    with pytest.raises(
        WorkerError, match=r"^tests\.harness\.user_ops:Boom\.process\(\) raised ValueError: cannot"
    ):
        await boom.process_batch([{"x": 1}])  # the user's method is named, not the protocol's
    await boom.close()

    before = workers_running()
    with pytest.raises(WorkerError, match="cannot send its input"):
        workers.load(f"{OPS}:Upper", {"x": b"bytes"})
    wait_until(
        lambda: workers_running() <= before, timeout=10, what="the worker of a config that is no JSON to end"
    )

    raw = workers.load(f"{OPS}:NotJson", {})
    await raw.open(ctx(tmp_path))
    with pytest.raises(WorkerError, match=r"NotJson\.process\(\): cannot send its output"):
        await raw.process({})
    await raw.close()


@pytest.mark.parametrize(
    ("name", "config", "message"),
    [
        ("python:tests.harness.nope:X", {}, r"^cannot import tests\.harness\.nope: ModuleNotFoundError"),
        (f"{OPS}:NotAnOperator", {}, r"does not implement the operator API \(no open\(\)\)"),
        (f"{OPS}:Missing", {}, r"^tests\.harness\.user_ops has no class Missing$"),
        (f"{OPS}:Spin", {"seconds": "long"}, r"validation error for Config\nseconds"),
    ],
)
async def test_load_errors_come_from_open_as_in_the_agent(
    tmp_path: Path, name: str, config: dict[str, Any], message: str
) -> None:
    with pytest.raises(Exception) as inside:  # the in-agent runtime, for the message
        python_runtime.load(name, config)
    op = proxy(workers.load(name, config))
    with pytest.raises(OperatorLoadError, match=message) as outside:
        await op.open(ctx(tmp_path))
    assert str(outside.value) == str(inside.value)
    assert op.worker.exited.is_set(), "a worker that could not load is ended"
    assert await op.close() is None


async def test_a_slow_import_stalls_nothing_but_the_tasks_start(tmp_path: Path) -> None:
    t0 = time.monotonic()
    op = workers.load("python:tests.harness.user_ops_slow:Slow", {})
    built = time.monotonic() - t0
    t0 = time.monotonic()
    lag = await lag_while(op.open(ctx(tmp_path)))
    opened = time.monotonic() - t0
    assert await op.process({"a": 1}) == [{"a": 1}]
    await op.close()
    assert built < 0.1, f"load() took {built:.3f} s"
    assert opened >= 1.0, opened  # the import spun for a second, in the worker
    assert lag < 0.1, f"the loop stalled {lag * 1000:.0f} ms"


async def test_state_crosses_the_boundary_before_open_and_after_suspend(tmp_path: Path) -> None:
    op = proxy(workers.load(f"{OPS}:Counter", {}))
    op.restore({"n": 41})  # as the runner does: before open()
    await op.open(ctx(tmp_path))
    assert type(op).stateful is True and type(op).close_emits is False  # the class's flags
    assert await op.process({}) == [{"count": 42}]
    assert op.snapshot() == {"n": 42}
    op.restore({"n": 9})
    assert await op.process_batch([{}, {}]) == [{"count": 10}, {"count": 11}]
    assert await op.suspend() == []  # Operator.suspend(): close()
    assert op.worker.exited.is_set()
    assert op.snapshot() == {"n": 11}, "the state it was suspended with, after the worker ended"

    bad = proxy(workers.load(f"{OPS}:Counter", {}))
    bad.restore({"m": 1})
    with pytest.raises(WorkerError, match=r"Counter\.restore\(\) raised KeyError"):
        await bad.open(ctx(tmp_path))


async def test_sources_stream_in_chunks_and_a_stateful_one_record_by_record(tmp_path: Path) -> None:
    ticks = proxy(workers.load(f"{OPS}:Ticks", {"count": 250}))
    await ticks.open(ctx(tmp_path))
    assert [r["i"] async for r in ticks.generate()] == list(range(250))
    await ticks.close()

    steps = proxy(workers.load(f"{OPS}:Steps", {"count": 5}))
    steps.restore({"n": 2})
    await steps.open(ctx(tmp_path))
    seen = []
    async for record in steps.generate():
        # a checkpoint between two records: the state is where the last record left it
        assert steps.snapshot() == {"n": record["i"]}
        seen.append(record["i"])
    assert seen == [3, 4, 5]
    await steps.close()

    upper = proxy(workers.load(f"{OPS}:Upper", {}))
    await upper.open(ctx(tmp_path))
    with pytest.raises(WorkerError, match="is not a source, and no edge feeds it"):
        [r async for r in upper.generate()]
    await upper.close()


async def test_emitted_records_come_before_the_snapshot_that_counts_them(tmp_path: Path) -> None:
    emitted: list[Record] = []
    op = proxy(workers.load(f"{OPS}:Ticker", {}))
    await op.open(ctx(tmp_path, emitted))
    assert type(op).close_emits is True
    for k in range(1, 21):
        await eventually(lambda k=k: len(emitted) >= 5 * k, timeout=10, what="the worker's timer")  # type: ignore[misc]
        state = op.snapshot()
        # every record it emitted before it was asked is here, and none after
        assert emitted[-1]["n"] == state["n"], (emitted[-3:], state)
    assert [r["n"] for r in emitted] == list(range(1, len(emitted) + 1))
    closed = await op.close()
    assert closed == [{"closed": emitted[-1]["n"]}]


async def test_the_worker_flushes_before_it_answers(tmp_path: Path) -> None:
    out = tmp_path / "out.txt"
    op = proxy(workers.load(f"{OPS}:Buffered", {"path": str(out)}))
    await op.open(ctx(tmp_path))
    assert await op.process_batch([{"i": 1}, {"i": 2}]) == []
    assert out.read_text() == "1\n2\n"  # durable before the batch's input is acknowledged
    await op.process({"i": 3})
    assert out.read_text() == "1\n2\n3\n"
    op.flush()  # nothing left to do
    await op.close()


async def test_a_cancelled_call_kills_the_spinning_worker(tmp_path: Path) -> None:
    mark = tmp_path / "spinning"
    op = proxy(workers.load(f"{OPS}:Spin", {"seconds": 3600, "mark": str(mark)}))
    await op.open(ctx(tmp_path))
    call = asyncio.create_task(op.process({}))
    await eventually(mark.exists, timeout=10, what="the worker spinning")
    t0 = time.monotonic()
    call.cancel()  # the task stops
    with pytest.raises(asyncio.CancelledError):
        await call
    assert await op.close() is None
    assert time.monotonic() - t0 < 2.0
    assert op.worker.exited.is_set() and gone(op.worker.pid)
    with pytest.raises(WorkerDied, match="was stopped"):
        await op.process({})


async def test_a_dead_worker_fails_its_calls_with_its_exit(tmp_path: Path) -> None:
    op = proxy(workers.load(f"{OPS}:Exit", {"code": 3}))
    await op.open(ctx(tmp_path))
    with pytest.raises(
        WorkerDied, match=r"^the worker process of tests\.harness\.user_ops:Exit exited with code 3$"
    ):
        await op.process_batch([{}])
    with pytest.raises(WorkerDied, match="exited with code 3"):
        await op.close()

    mark = tmp_path / "spinning"
    spin = proxy(workers.load(f"{OPS}:Spin", {"seconds": 3600, "mark": str(mark)}))
    await spin.open(ctx(tmp_path))
    call = asyncio.create_task(spin.process({}))
    await eventually(mark.exists, timeout=10, what="the worker spinning")
    os.kill(spin.worker.pid, signal.SIGKILL)
    with pytest.raises(WorkerDied, match="user_ops:Spin was killed by signal SIGKILL"):
        await asyncio.wait_for(call, 10)
    with pytest.raises(WorkerDied, match="killed by signal SIGKILL"):
        await spin.process({})


async def test_what_a_worker_started_goes_with_it(tmp_path: Path) -> None:
    op = proxy(workers.load(f"{OPS}:Forks", {}))
    await op.open(ctx(tmp_path))
    (out,) = await op.process({})  # type: ignore[misc]
    child = int(out["child"])
    assert not gone(child)
    await op.close()
    wait_until(lambda: gone(child), timeout=10, what="the worker's own program to end")
    assert gone(op.worker.pid)


AGENT = textwrap.dedent(
    """
    import asyncio, sys
    from pathlib import Path
    from echo_agent.operators.base import TaskContext
    from echo_agent.runtimes import workers

    async def main():
        op = workers.load("python:tests.harness.user_ops:Spin", {"seconds": 3600})
        await op.open(TaskContext("df", "t", "dev", 1, Path(".")))
        asyncio.ensure_future(op.process({}))
        print(op.worker.pid, flush=True)
        sys.stdin.readline()  # the test has seen the worker
        if sys.argv[1] == "exits":
            return  # no close(): the agent just ends
        await asyncio.Event().wait()

    asyncio.run(main())
    """
)


@pytest.mark.parametrize("how", ["killed", "exits"])
def test_workers_die_with_the_agent(how: str) -> None:
    agent = subprocess.Popen(
        [sys.executable, "-c", AGENT, how], cwd=REPO, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    try:
        assert agent.stdin is not None and agent.stdout is not None
        worker = int(agent.stdout.readline())
        assert not gone(worker)
        if how == "killed":
            agent.kill()
        else:
            agent.stdin.write("go\n")
            agent.stdin.flush()
        assert agent.wait(30) in (0, -signal.SIGKILL)
        wait_until(lambda: gone(worker), timeout=10, what=f"the worker of an agent that {how}")
    finally:
        agent.kill()
        agent.wait()


# ------------------------------------------------------------ built-ins in a worker


async def test_a_built_in_asks_for_a_worker_and_runs_there_with_its_state(tmp_path: Path) -> None:
    cmd = DeployTask(
        cmd_id="c",
        dataflow="df",
        task="t",
        generation=1,
        operator="stats.window_aggregate",
        config={"op": "sum", "field": "v", "count": 2},
        resources={"worker": True},
    )
    policy = RuntimePolicy.decide("e")
    native = policy.build(
        cmd.model_copy(update={"resources": cmd.resources.model_copy(update={"worker": False})})
    )
    assert not isinstance(native, WorkerOperator)
    await native.open(ctx(tmp_path))
    op = proxy(policy.build(cmd))
    await op.open(ctx(tmp_path))
    assert type(op).stateful is True
    assert await op.process_batch([{"v": 1}]) == native.process_batch([{"v": 1}]) == []
    state = op.snapshot()
    assert state == native.snapshot()
    await op.close()
    resumed = proxy(policy.build(cmd))
    resumed.restore(state)  # as the runner does after a migration
    await resumed.open(ctx(tmp_path))
    out = await resumed.process_batch([{"v": 5}])
    assert out and out == native.process_batch([{"v": 5}]), out
    assert resumed.worker.proc.pid != os.getpid()
    await resumed.close()


async def test_an_operator_of_the_agent_is_refused_a_worker() -> None:
    cmd = DeployTask(
        cmd_id="c",
        dataflow="df",
        task="t",
        generation=1,
        operator="io.file_sink",
        config={"path": "x"},
        resources={"worker": True},
    )
    with pytest.raises(RuntimeRefused, match=r"io\.file_sink cannot run in a worker process"):
        RuntimePolicy.decide("e").build(cmd)


async def test_a_worker_runs_below_the_agents_priority(tmp_path: Path) -> None:
    from echo_agent.runtimes.worker_main import NICENESS

    op = proxy(workers.load(f"{OPS}:Upper", {}))
    await op.open(ctx(tmp_path))
    assert psutil.Process(op.worker.pid).nice() == min(19, psutil.Process().nice() + NICENESS)
    await op.close()
