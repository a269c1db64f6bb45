"""Agents run only what their device allows: which runtimes a device offers (and refuses),
and how the programs of the ``process`` runtime are confined (``echo_agent.runtimes.gating``
and ``echo_agent.runtimes.sandbox``). Real child processes; the agent's control path without
brokers (a refused deploy never reaches them)."""

from __future__ import annotations

import asyncio
import logging
import os
import pwd
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import orjson
import psutil
import pytest

from echo_agent.__main__ import parse_args
from echo_agent.control import TaskManager
from echo_agent.heartbeats import device_info
from echo_agent.operators import TaskContext
from echo_agent.running import TaskRunner
from echo_agent.runtimes import RuntimePolicy, RuntimeRefused, Sandbox, onnx_runtime
from echo_agent.runtimes.process_runtime import Process
from echo_agent.runtimes.python_runtime import OperatorLoadError, load
from echo_agent.runtimes.sandbox import CPU_GRACE, MIN_ADDRESS_SPACE_MB, SAFE_PATH, Account, UnknownUser
from echo_agent.runtimes.stdio import RunFailed
from echo_agent.settings import AgentSettings
from echo_shared.messages import CommandAck, DeployTask
from echo_shared.models import Resources, TaskState
from echo_shared.mqtt import MqttMessage
from echo_shared.names import Names
from tests.harness.programs import safe_python3
from tests.harness.waiting import eventually

PY = safe_python3()
as_root = pytest.mark.skipif(os.geteuid() != 0, reason="switching users needs an agent running as root")
ONNX = {"onnx"} if onnx_runtime.available() is None else set()
DOCUMENTED = {"ECHO_DATAFLOW", "ECHO_TASK", "ECHO_DEVICE", "ECHO_DATA_DIR"}


@pytest.fixture(autouse=True)
async def no_leaked_tasks() -> AsyncIterator[None]:
    before = asyncio.all_tasks()
    yield
    current = asyncio.current_task()
    leaked = [t for t in asyncio.all_tasks() - before if t is not current and not t.done()]
    for _ in range(50):
        if not leaked:
            break
        await asyncio.sleep(0.01)
        leaked = [t for t in leaked if not t.done()]
    assert not leaked, f"leaked asyncio tasks: {leaked}"


def deploy(operator: str, config: dict[str, Any], memory_mb: int = 32, task: str = "t") -> DeployTask:
    return DeployTask(
        cmd_id="c-1",
        dataflow="df-1",
        task=task,
        generation=1,
        operator=operator,
        config=config,
        resources=Resources(memory_mb=memory_mb),
    )


async def confined(
    tmp_path: Path, config: dict[str, Any], memory_mb: int = 32, sandbox: Sandbox | None = None
) -> Any:
    """A ``process`` operator built through an agent's gate that enables the runtime, opened."""
    policy = RuntimePolicy.decide("edge-1", ["process"], sandbox=sandbox or Sandbox.default())
    op = policy.build(deploy("process", config, memory_mb))
    assert isinstance(op, Process)
    await op.open(TaskContext("df-1", "t", "edge-1", 1, tmp_path / "task"))
    return op


REPORT = (
    "import json, os\n"
    "print(json.dumps({'uid': os.getuid(), 'gid': os.getgid(), 'groups': os.getgroups(),"
    " 'env': dict(os.environ), 'limits': open('/proc/self/limits').read(),"
    " 'pid': os.getpid(), 'pgid': os.getpgid(0), 'sid': os.getsid(0), 'umask': os.umask(0)}))\n"
)


async def report(tmp_path: Path, mode: str = "batch", **kw: Any) -> dict[str, Any]:
    assert PY is not None
    op = await confined(tmp_path, {"command": [PY, "-c", REPORT], "mode": mode, "linger": 10}, **kw)
    try:
        out: list[dict[str, Any]] = list(
            await (op.process_batch([{"go": 1}]) if mode == "batch" else op.process({"go": 1}))
        )
    finally:
        rest: list[dict[str, Any]] = (await op.close()) or []
    [r] = [*out, *rest]
    return r


def limit(limits: str, name: str) -> tuple[str, str]:
    """(soft, hard) of one row of /proc/<pid>/limits."""
    for line in limits.splitlines():
        if line.startswith(name):
            soft, hard = line[len(name) :].split()[:2]
            return soft, hard
    raise AssertionError(f"no {name!r} in {limits}")


# ------------------------------------------------------------------------- who, what, where


@as_root
async def test_programs_run_as_nobody_without_the_agents_groups(tmp_path: Path) -> None:
    nobody = pwd.getpwnam("nobody")
    r = await report(tmp_path)
    assert (r["uid"], r["gid"]) == (nobody.pw_uid, nobody.pw_gid)
    assert set(r["groups"]) <= {nobody.pw_gid}  # no supplementary group of the agent's
    assert r["umask"] == 0o077
    work = tmp_path / "task" / "work"
    assert (work.stat().st_uid, oct(work.stat().st_mode & 0o777)) == (nobody.pw_uid, "0o700")
    assert (tmp_path / "task").stat().st_uid == 0  # the task's directory stays the agent's


@as_root
async def test_run_as_another_user(tmp_path: Path) -> None:
    daemon = pwd.getpwnam("daemon")
    r = await report(tmp_path, sandbox=Sandbox.for_agent("daemon"))
    assert (r["uid"], r["gid"]) == (daemon.pw_uid, daemon.pw_gid)


async def test_the_environment_is_minimal_and_nothing_of_the_agents(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # what an agent's environment may hold: none of it reaches the program
    monkeypatch.setenv("SANDBOX_MARKER", "from-the-agent")
    monkeypatch.setenv("ECHO_CREDENTIALS_FILE", "/secret/credentials.json")
    monkeypatch.setenv("ECHO_ADMIN_TOKEN_FILE", "/secret/admin.token")
    monkeypatch.setenv("ECHO_MQTT_URL", "mqtts://user:pass@broker:8883")
    monkeypatch.setenv("PYTHONPATH", "/agent/only")
    env = (await report(tmp_path))["env"]
    work = str(tmp_path / "task" / "work")
    assert env == {
        "PATH": SAFE_PATH,
        "HOME": work,
        "LANG": "C.UTF-8",
        "LC_ALL": "C.UTF-8",
        "ECHO_DATAFLOW": "df-1",
        "ECHO_TASK": "t",
        "ECHO_DEVICE": "edge-1",
        "ECHO_DATA_DIR": work,
    }
    assert "SANDBOX_MARKER" not in env and "PYTHONPATH" not in env
    assert {k for k in env if k.startswith("ECHO_")} == DOCUMENTED
    # the config's env comes on top
    assert PY is not None
    op = await confined(
        tmp_path,
        {"command": [PY, "-c", REPORT], "mode": "batch", "env": {"MODEL": "m.onnx", "PATH": "/opt/bin"}},
    )
    [r] = await op.process_batch([{"go": 1}])
    assert r["env"]["MODEL"] == "m.onnx" and r["env"]["PATH"] == "/opt/bin"
    assert "SANDBOX_MARKER" not in r["env"]


# ------------------------------------------------------------------------- limits


async def test_limits_of_a_batch_run(tmp_path: Path) -> None:
    limits = (await report(tmp_path, memory_mb=512))["limits"]
    assert limit(limits, "Max address space") == (str(512 << 20),) * 2
    assert limit(limits, "Max cpu time") == ("600", str(600 + CPU_GRACE))
    assert limit(limits, "Max open files") == ("1024", "1024")
    assert limit(limits, "Max core file size") == ("0", "0")
    # the default reservation (32 MiB) would starve any interpreter: the floor applies
    limits = (await report(tmp_path, memory_mb=32))["limits"]
    assert limit(limits, "Max address space") == (str(MIN_ADDRESS_SPACE_MB << 20),) * 2
    limits = (await report(tmp_path, memory_mb=0))["limits"]  # 0: no memory limit
    assert limit(limits, "Max address space") == ("unlimited", "unlimited")


async def test_a_lines_program_lives_as_long_as_its_task_so_no_cpu_limit_by_default(tmp_path: Path) -> None:
    limits = (await report(tmp_path, mode="lines"))["limits"]
    assert limit(limits, "Max cpu time") == ("unlimited", "unlimited")
    assert limit(limits, "Max open files") == ("1024", "1024")
    capped = Sandbox.for_agent(lines_cpu_seconds=86_400, max_files=256, quiet=True)
    limits = (await report(tmp_path, mode="lines", sandbox=capped))["limits"]
    assert limit(limits, "Max cpu time") == ("86400", str(86_400 + CPU_GRACE))
    assert limit(limits, "Max open files") == ("256", "256")


async def test_a_run_over_its_cpu_seconds_is_killed(tmp_path: Path) -> None:
    op = await confined(
        tmp_path,
        {"command": ["sh", "-c", "while :; do :; done"], "mode": "batch", "timeout": 60},
        sandbox=Sandbox.for_agent(cpu_seconds=1, quiet=True),
    )
    with pytest.raises(
        RunFailed, match=r"cpu time limit exceeded: 1 CPU second \(ECHO_PROCESS_CPU_SECONDS\)"
    ):
        await op.process_batch([{"v": 1}])


async def test_a_run_over_its_memory_fails(tmp_path: Path) -> None:
    assert PY is not None
    grab = "import sys\nx = bytearray(400 << 20)\nprint('{}')\n"
    op = await confined(tmp_path, {"command": [PY, "-c", grab], "mode": "batch"}, memory_mb=300)
    with pytest.raises(RunFailed, match="MemoryError"):
        await op.process_batch([{"v": 1}])
    op = await confined(tmp_path, {"command": [PY, "-c", grab], "mode": "batch"}, memory_mb=1024)
    assert await op.process_batch([{"v": 1}]) == [{}]


# ------------------------------------------------------------------------- groups and stops


def alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


async def test_a_program_has_its_own_session_and_group(tmp_path: Path) -> None:
    r = await report(tmp_path)
    assert r["pgid"] == r["pid"] == r["sid"]
    assert r["pgid"] != os.getpgid(0)


@pytest.mark.parametrize("ending", ["cat", "cat; exec sleep 302"])
async def test_grandchildren_die_with_the_program_even_those_that_left_its_group(
    tmp_path: Path, ending: str
) -> None:
    # a grandchild in the group, and one in a session of its own (setsid); neither holds
    # stdout. At the end of its input the program ends (cat), or ignores it and is killed
    script = f"sleep 300 >/dev/null 2>&1 & setsid sleep 301 >/dev/null 2>&1 & {ending}"
    op = await confined(tmp_path, {"command": ["sh", "-c", script], "timeout": 0.5})
    leader = op.lines.child.proc.pid

    def sleepers() -> list[psutil.Process]:
        return [p for p in psutil.Process(leader).children(recursive=True) if p.name() == "sleep"]

    await eventually(lambda: len(sleepers()) == 2, what="both sleepers started")
    pids = [leader, *(p.pid for p in sleepers())]
    assert len({os.getsid(p) for p in pids}) == 2  # one left the group and the session
    if ending == "cat":
        assert await op.close() == []
    else:
        with pytest.raises(RunFailed, match=r"did not exit within 0\.5s"):
            await op.close()
    await eventually(lambda: not any(alive(p) for p in pids), what="no orphans")


# ------------------------------------------------------------------------- file mode


@as_root
async def test_file_runs_read_their_input_and_write_their_output_only_for_the_run(tmp_path: Path) -> None:
    assert PY is not None
    src = tmp_path / "task" / "incoming" / "p-0-a.txt"
    src.parent.mkdir(parents=True)
    src.write_text("abc")
    src.chmod(0o600)  # as if the agent's umask were 077
    script = (
        "import sys, os\n"
        "open(sys.argv[2], 'w').write(open(sys.argv[1]).read().upper())\n"
        "print(sys.argv[1], sys.argv[2], file=sys.stderr)\n"
    )
    op = await confined(
        tmp_path,
        {"command": [PY, "-c", script, "{input}", "{output}"], "mode": "file", "output": "{stem}.up"},
    )
    [out] = await op.process({"path": str(src), "name": "a.txt", "size": 3})
    output = Path(out["path"])
    assert await asyncio.to_thread(output.read_text) == "ABC"
    # taken back after the run: the program cannot swap its output for a link any more
    assert (await asyncio.to_thread(output.parent.stat)).st_uid == 0


async def test_an_output_that_is_a_link_is_refused(tmp_path: Path) -> None:
    assert PY is not None
    src = tmp_path / "task" / "incoming" / "p-0-a.txt"
    src.parent.mkdir(parents=True)
    src.write_text("abc")
    # the program tries to make the agent send one of the agent's files as its output
    script = "import os, sys\nos.symlink('/etc/hostname', sys.argv[2])\n"
    op = await confined(
        tmp_path,
        {"command": [PY, "-c", script, "{input}", "{output}"], "mode": "file", "output": "{stem}.up"},
    )
    with pytest.raises(RunFailed, match=r"made its \{output\} .*a.up something else than a regular file"):
        await op.process({"path": str(src), "name": "a.txt", "size": 3})


# ------------------------------------------------------------------------- who programs run as


def test_the_agents_user_when_it_is_not_root(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="echo_agent.runtimes.sandbox"):
        s = Sandbox.for_agent(euid=1000)
    assert s.account is None and not s.switches and s.popen_args() == {}
    assert "cannot switch users" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="echo_agent.runtimes.sandbox"):
        Sandbox.for_agent("daemon", euid=1000)
    assert "not daemon" in caplog.text and "cannot switch users" in caplog.text


@as_root
def test_nobody_by_default_when_root_and_unknown_users_refused() -> None:
    s = Sandbox.for_agent(quiet=True)
    nobody = pwd.getpwnam("nobody")
    assert s.account == Account("nobody", nobody.pw_uid, nobody.pw_gid) and s.switches
    assert s.popen_args() == {"user": nobody.pw_uid, "group": nobody.pw_gid, "extra_groups": []}
    assert Account.lookup(str(nobody.pw_uid)).name == "nobody"
    with pytest.raises(UnknownUser, match="no user 'no-such-user-x'"):
        Sandbox.for_agent("no-such-user-x")


# ------------------------------------------------------------------------- which runtimes


def test_safe_defaults_and_runtimes_enabled_on_top() -> None:
    none = RuntimePolicy.decide("edge-1")
    assert set(none.offered) == {"python"} | ONNX
    assert none.refusal("process") == (
        "runtime 'process' is not enabled on device edge-1 (start echo-agent with --runtime process)"
    )
    assert none.refusal("container") == (
        "runtime 'container' is not enabled on device edge-1 (start echo-agent with --runtime container)"
    )
    for accepted in ("io.generate", "core.map", "python:mypkg.ops:Thing", "no.such.operator"):
        assert none.refusal(accepted) is None  # an unknown operator fails to build, not here
    # enabling adds, never removes; naming a default changes nothing
    assert set(RuntimePolicy.decide("edge-1", ["process"]).offered) == {"python", "process"} | ONNX
    assert RuntimePolicy.decide("edge-1", ["python", "onnx", "process"]).offered == (
        RuntimePolicy.decide("edge-1", ["process"]).offered
    )
    with pytest.raises(ValueError, match="unknown runtimes"):
        RuntimePolicy.decide("edge-1", ["shell"])


def test_an_enabled_runtime_that_is_not_usable_is_not_offered(caplog: pytest.LogCaptureFixture) -> None:
    def usable(name: str) -> str | None:
        return "no Docker engine at unix:///nowhere.sock: no such file" if name == "container" else None

    p = RuntimePolicy.decide("fog-1", ["container", "process"], usable=usable)
    assert p.offered == ("onnx", "process", "python")
    assert p.refusal("container") == (
        "runtime 'container' is not available on device fog-1: "
        "no Docker engine at unix:///nowhere.sock: no such file"
    )
    with caplog.at_level(logging.INFO, logger="echo_agent.runtimes.gating"):
        p.announce(["container", "process"])
    assert "offers the runtimes onnx, process, python" in caplog.text
    assert "'container' is not available on device fog-1" in caplog.text


def test_build_refuses_and_confines() -> None:
    sandbox = Sandbox.for_agent(quiet=True)
    with pytest.raises(RuntimeRefused, match="runtime 'process' is not enabled on device edge-1"):
        RuntimePolicy.decide("edge-1", sandbox=sandbox).build(deploy("process", {"command": ["id"]}))
    op = RuntimePolicy.decide("edge-1", ["process"], sandbox=sandbox).build(
        deploy("process", {"command": ["id"]}, memory_mb=700)
    )
    assert isinstance(op, Process) and op.sandbox is sandbox and op.memory_mb == 700
    # without a sandbox given: the defaults, resolved only when a program is built
    op = RuntimePolicy.decide("edge-1", ["process"]).build(deploy("process", {"command": ["id"]}))
    assert isinstance(op, Process) and op.sandbox == Sandbox.default()


def test_what_a_device_advertises_is_what_it_accepts(monkeypatch: pytest.MonkeyPatch) -> None:
    for var in ("ECHO_RUNTIMES", "ECHO_RUN_AS"):
        monkeypatch.delenv(var, raising=False)
    plain = AgentSettings(device_id="edge-1", tier="edge", mqtt_url="mqtt://127.0.0.1:1")
    assert set(device_info(plain).runtimes) == {"python"} | ONNX
    enabled = AgentSettings(**parse_args(["--device-id", "e", "--tier", "edge", "--runtime", "process"]))
    assert set(device_info(enabled).runtimes) == {"python", "process"} | ONNX
    # the explicit lists of before keep their meaning
    monkeypatch.setenv("ECHO_RUNTIMES", '["python", "process", "onnx"]')
    listed = AgentSettings(device_id="edge-1", tier="edge")
    assert set(device_info(listed).runtimes) == {"python", "process"} | ONNX


def test_cli_options() -> None:
    args = parse_args(["--device-id", "e", "--tier", "edge", "--runtime", "process", "--run-as", "daemon"])
    assert args["runtimes"] == ["process"] and args["run_as"] == "daemon"
    assert "runtimes" not in parse_args(["--device-id", "e", "--tier", "edge"])
    with pytest.raises(SystemExit):
        parse_args(["--device-id", "e", "--tier", "edge", "--runtime", "shell"])
    with pytest.raises(ValueError, match="no user 'no-such-user-x'"):
        AgentSettings(device_id="e", tier="edge", run_as="no-such-user-x")


# ------------------------------------------------------------------------- the agent refuses


async def test_the_agent_refuses_a_deploy_of_a_runtime_it_does_not_offer(tmp_path: Path) -> None:
    sent: list[tuple[str, bytes]] = []
    marker = tmp_path / "pwned"
    manager = TaskManager(
        device="edge-1",
        mqtt_url="mqtt://127.0.0.1:1",  # never dialled: nothing of the task starts
        names=Names("t"),
        data_dir=tmp_path / "data",
        session_expiry=60,
        publish=lambda topic, payload: sent.append((topic, payload)),
        channel_window=100,
        runtimes=RuntimePolicy.decide("edge-1"),
    )
    cmd = deploy("process", {"command": ["sh", "-c", f"id > {marker}"]})
    for _ in range(2):  # delivered twice: the same answer
        ack = await manager.deploy(cmd)
        assert (ack.ok, ack.state) == (False, TaskState.failed)
        assert ack.reason == (
            "runtime 'process' is not enabled on device edge-1 (start echo-agent with --runtime process)"
        )
    assert manager.tasks == {} and not (tmp_path / "data").exists() and not marker.exists()
    # through the command path (what the broker delivers), the ack goes to the master
    await manager._handle(
        MqttMessage(topic="t/cmd", payload=cmd.to_bytes(), qos=1, mid=1, retain=False, dup=False, epoch=0)
    )
    [(topic, payload)] = sent
    assert topic == Names("t").ack_topic("edge-1")
    ack = CommandAck.model_validate(orjson.loads(payload))
    assert not ack.ok and "runtime 'process' is not enabled on device edge-1" in ack.reason
    # a device without the gate argument gets the safe defaults
    default = TaskManager(
        device="edge-2",
        mqtt_url="mqtt://127.0.0.1:1",
        names=Names("t"),
        data_dir=tmp_path / "data",
        session_expiry=60,
        publish=lambda topic, payload: None,
        channel_window=100,
    )
    ack = await default.deploy(deploy("container", {"image": "busybox"}))
    assert not ack.ok and ack.reason.startswith("runtime 'container' is not enabled on device edge-2")


async def test_a_task_runner_without_a_gate_refuses_external_programs(tmp_path: Path) -> None:
    runner = TaskRunner(
        deploy("process", {"command": ["id"]}),
        device="edge-3",
        mqtt_url="mqtt://127.0.0.1:1",
        names=Names("t"),
        data_dir=tmp_path,
        report=lambda status: None,
        session_expiry=60,
    )
    await runner.start()
    assert runner.state is TaskState.failed
    assert runner.reason.startswith("runtime 'process' is not enabled on device edge-3")


def test_a_python_operator_is_checked_before_its_class_is_called(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    # Popen({"sh": .., "-c": .., cmd: ..}) would run the keys as an argv
    config = {"sh": 1, "-c": 1, f"touch {marker}": 1}
    with pytest.raises(OperatorLoadError, match="does not implement the operator API"):
        load("python:subprocess:Popen", config)
    assert not marker.exists()
    assert sys.modules["subprocess"]  # imported, never called
