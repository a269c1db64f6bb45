"""cgroups v2 for ``process`` tasks, against a directory laid out like the unified hierarchy
(this machine need not have one the tests may change): what makes the agent use them or
not, the files it writes, how a program enters its cgroup before it execs, and the OOM kill
that the kernel counts in ``memory.events`` named as the task's reason."""

from __future__ import annotations

import errno
import shutil
import signal
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from echo_agent.operators import TaskContext, build
from echo_agent.runtimes import limits_cgroup
from echo_agent.runtimes.limits import limit_hit
from echo_agent.runtimes.limits_cgroup import CgroupError, CgroupTree, ProgramCgroup, cpu_max, own_cgroup
from echo_agent.runtimes.sandbox import Sandbox
from echo_agent.runtimes.stdio import RunFailed
from tests.harness.programs import safe_python3

PY = safe_python3()


@pytest.fixture(autouse=True)
def directories_are_not_cgroupfs(monkeypatch: pytest.MonkeyPatch) -> None:
    """On cgroupfs a cgroup is removed with its interface files in it, and ``cgroup.procs``
    lists live processes only; here they are files (and a pid listed may be reused: the
    fake kernel empties it instead of anything being killed)."""
    monkeypatch.setattr(ProgramCgroup, "_rmdir", lambda self: shutil.rmtree(self.path))

    def exited(self: ProgramCgroup) -> None:
        if (self.path / "cgroup.procs").is_file():
            (self.path / "cgroup.procs").write_text("")

    monkeypatch.setattr(ProgramCgroup, "kill", exited)


def hierarchy(root: Path, own: str = "/", controllers: str = "cpu io memory pids", procs: str = "") -> Path:
    """A unified hierarchy at ``root`` with the agent's cgroup ``own``; returns that cgroup."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "cgroup.controllers").write_text(controllers + "\n")
    base = root / own.lstrip("/")
    base.mkdir(parents=True, exist_ok=True)
    for name, text in (
        ("cgroup.controllers", controllers),
        ("cgroup.subtree_control", ""),
        ("cgroup.procs", procs),
    ):
        (base / name).write_text(text + "\n" if text else "")
    return base


def test_reading_the_agents_cgroup() -> None:
    v1 = "4:memory:/process_api/5afa\n1:cpu:/\n0::/\n"
    assert own_cgroup(v1) == "/"
    assert own_cgroup("0::/system.slice/echo-agent.service\n") == "/system.slice/echo-agent.service"
    assert own_cgroup("4:memory:/x\n") is None
    assert cpu_max(0.25) == "25000 100000"
    assert cpu_max(2) == "200000 100000"
    assert cpu_max(0.001) == "1000 100000", "below the kernel's smallest quota"


def test_no_cgroups_v2_and_why(tmp_path: Path) -> None:
    tree, why = CgroupTree.detect(tmp_path / "none", own="/")
    assert tree is None and why == f"no cgroup v2 hierarchy at {tmp_path / 'none'}"
    v1 = tmp_path / "v1"  # a v1 (or hybrid) layout: a directory per controller
    for c in ("cpu", "memory", "unified"):
        (v1 / c).mkdir(parents=True)
    assert CgroupTree.detect(v1, own="/") == (None, f"no cgroup v2 hierarchy at {v1}")
    base = hierarchy(tmp_path / "v2", own="/a.service", controllers="io pids")
    tree, why = CgroupTree.detect(tmp_path / "v2", own="/a.service")
    assert tree is None and why == f"controllers cpu, memory not all available in {base}"


def test_the_controllers_enabled_for_the_programs_below_the_agent(tmp_path: Path) -> None:
    base = hierarchy(tmp_path, own="/echo.service")
    tree, why = CgroupTree.detect(tmp_path, own="/echo.service")
    assert why == "" and tree == CgroupTree(base)
    assert (base / "cgroup.subtree_control").read_text() == "+cpu +memory"
    assert [p.name for p in base.iterdir() if p.is_dir()] == [], "the probe cgroup was left"


def kernel_rules(monkeypatch: pytest.MonkeyPatch, root: Path) -> list[tuple[Path, str]]:
    """Two rules of the kernel's, on the fake: a pid written to a ``cgroup.procs`` leaves
    the one it was in, and a cgroup holding processes takes no controllers for its children
    (EBUSY). Returns the writes."""
    write = limits_cgroup.write
    writes: list[tuple[Path, str]] = []

    def kernel(path: Path, value: str) -> None:
        writes.append((path, value))
        if path.name == "cgroup.subtree_control" and (path.parent / "cgroup.procs").read_text().split():
            raise OSError(errno.EBUSY, "Device or resource busy")
        if path.name == "cgroup.procs":
            for procs in root.rglob("cgroup.procs"):
                procs.write_text("".join(f"{p}\n" for p in procs.read_text().split() if p != value))
            with open(path, "a") as f:
                f.write(f"{value}\n")
            return
        write(path, value)

    monkeypatch.setattr(limits_cgroup, "write", kernel)
    return writes


def test_the_agent_moves_to_a_leaf_when_its_cgroup_holds_processes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    base = hierarchy(tmp_path, own="/", procs="101\n202")  # the agent and a worker of its
    writes = kernel_rules(monkeypatch, tmp_path)
    tree, why = CgroupTree.detect(tmp_path, own="/", mine=lambda pid: pid in (101, 202))
    assert tree is not None, why
    assert (base / "agent" / "cgroup.procs").read_text().split() == ["101", "202"]
    assert (base / "cgroup.procs").read_text() == ""
    assert writes.count((base / "cgroup.subtree_control", "+cpu +memory")) == 2, "refused, then taken"
    assert (base / "cgroup.subtree_control").read_text() == "+cpu +memory"


def test_a_cgroup_shared_with_processes_of_others_is_left_alone(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    base = hierarchy(tmp_path, own="/", procs="1\n101")  # say, an init that is not the agent
    kernel_rules(monkeypatch, tmp_path)
    tree, why = CgroupTree.detect(tmp_path, own="/", mine=lambda pid: pid == 101)
    assert tree is None and why == (
        f"cannot manage cgroups under {base}: its cgroup holds processes that are not the agent's (1): "
        "give it a cgroup of its own (a systemd unit with Delegate=yes)"
    )
    assert not (base / "agent").exists() and (base / "cgroup.procs").read_text().split() == ["1", "101"]


def test_a_cgroup_that_cannot_be_made_means_rlimits(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    hierarchy(tmp_path, own="/")

    def denied(path: Path, value: str) -> None:
        raise PermissionError(errno.EACCES, "Permission denied", str(path))

    monkeypatch.setattr(limits_cgroup, "write", denied)
    tree, why = CgroupTree.detect(tmp_path, own="/")
    assert (
        tree is None and why.startswith(f"cannot manage cgroups under {tmp_path}: ") and "Permission" in why
    )


def test_a_programs_cgroup_its_limits_and_its_oom_kills(tmp_path: Path) -> None:
    base = hierarchy(tmp_path, own="/")
    group = CgroupTree(base).make("df-1-t", cpu=0.25, memory_mb=64)
    assert group.path.parent == base and group.path.name.startswith("echo-df-1-t-")
    assert (group.path / "cpu.max").read_text() == "25000 100000"
    assert (group.path / "memory.max").read_text() == str(64 << 20)
    assert group.look() == 0
    (group.path / "memory.events").write_text("low 0\nhigh 0\nmax 12\noom 1\noom_kill 1\noom_group_kill 1\n")
    assert group.look() == 1
    group.remove()
    assert not group.path.exists() and group.oom_kills == 1, "the count went with the cgroup"
    group.remove()  # idempotent
    only_cpu = CgroupTree(base).make("df-1-u", cpu=1.5, memory_mb=0)
    assert (only_cpu.path / "cpu.max").read_text() == "150000 100000"
    assert not (only_cpu.path / "memory.max").exists() and only_cpu.memory_mb is None
    only_cpu.remove()


def test_an_oom_kill_in_its_cgroup_is_the_reason() -> None:
    assert limit_hit(
        -signal.SIGKILL, "", memory_mb=None, cpu_seconds_limit=600, cgroup_memory_mb=64, oom_kills=1
    ) == ("memory limit exceeded: 64 MiB (resources.memory_mb)")
    # killed, but not by the kernel's OOM killer: its cgroup would have counted it
    assert limit_hit(-signal.SIGKILL, "", memory_mb=None, cpu_seconds_limit=600, cgroup_memory_mb=64) is None


# ------------------------------------------------------------------------- programs in a cgroup


class FakeKernel(CgroupTree):
    """Counts an OOM kill in every cgroup it makes (what the kernel does when the program
    goes beyond memory.max), when ``oom``."""

    oom = False

    def make(self, name: str, *, cpu: float | None, memory_mb: int | None) -> ProgramCgroup:
        group = super().make(name, cpu=cpu, memory_mb=memory_mb)
        (group.path / "memory.events").write_text(f"oom {int(self.oom)}\noom_kill {int(self.oom)}\n")
        self.made.append(group)
        return group

    @property
    def made(self) -> list[ProgramCgroup]:
        return self.__dict__.setdefault("_made", [])


@pytest.fixture
async def tree(tmp_path: Path) -> AsyncIterator[FakeKernel]:
    yield FakeKernel(hierarchy(tmp_path / "cgroup", own="/"))


async def opened(tmp_path: Path, tree: CgroupTree, command: list[str], *, cpu: float, memory_mb: int) -> Any:
    op = build("process", {"command": command, "mode": "batch"})
    op.confine(Sandbox(Sandbox.default().account, cgroups=tree), memory_mb, cpu)
    await op.open(TaskContext("df-1", "proc", "edge-7", 1, tmp_path / "task"))
    return op


WHO = (
    "import time\nstarted = time.monotonic()\nimport os, sys, json\nsys.stdin.read()\n"
    "print(json.dumps({'pid': os.getpid(), 'started': started}))\n"
)
GREEDY = "import sys\nsys.stdin.read()\nx = bytearray(400 << 20)\nprint('{}')\n"


async def test_a_program_enters_its_cgroup_before_it_runs(tmp_path: Path, tree: FakeKernel) -> None:
    entered: list[str] = []
    moved_at: list[float] = []
    remove, enter = ProgramCgroup.remove, ProgramCgroup.enter

    def slow_enter(group: ProgramCgroup, pid: int) -> None:  # a slow kernel: the program waits
        time.sleep(0.3)
        enter(group, pid)
        moved_at.append(time.monotonic())

    def removing(group: ProgramCgroup) -> None:
        if group.path.exists():
            entered.append((group.path / "cgroup.procs").read_text())
        remove(group)

    op = await opened(tmp_path, tree, [PY, "-c", WHO], cpu=0.25, memory_mb=64)
    try:
        with pytest.MonkeyPatch.context() as m:
            m.setattr(ProgramCgroup, "remove", removing)
            m.setattr(ProgramCgroup, "enter", slow_enter)
            (out,) = await op.process_batch([{"v": 1}])
            assert await op.process_batch([{"v": 2}]) != []
    finally:
        await op.close()
    assert entered[0] == str(out["pid"]), "the program was not moved into its cgroup"
    assert out["started"] > moved_at[0], "the program ran before it was in its cgroup"
    assert len(tree.made) == 2 and not any(g.path.exists() for g in tree.made), "a cgroup per run, removed"
    assert (tree.made[0].path.parent / "cgroup.procs").read_text() == ""


async def test_memory_in_a_cgroup_is_its_memory_max_not_an_address_space(
    tmp_path: Path, tree: FakeKernel
) -> None:
    op = await opened(tmp_path, tree, [PY, "-c", GREEDY], cpu=0, memory_mb=64)
    try:  # a fake cgroup limits nothing: without RLIMIT_AS, 400 MiB of address space is fine
        assert await op.process_batch([{"v": 1}]) == [{}]
    finally:
        await op.close()


async def test_a_program_the_kernel_oom_killed_fails_its_task_naming_the_limit(
    tmp_path: Path, tree: FakeKernel
) -> None:
    tree.oom = True
    die = "import os, signal, sys\nsys.stdin.read()\nos.kill(os.getpid(), signal.SIGKILL)\n"
    op = await opened(tmp_path, tree, [PY, "-c", die], cpu=0.5, memory_mb=64)
    try:
        with pytest.raises(RunFailed, match=r"memory limit exceeded: 64 MiB \(resources\.memory_mb\)") as err:
            await op.process_batch([{"v": 1}])
        assert err.value.code == -signal.SIGKILL
    finally:
        await op.close()


async def test_a_program_that_cannot_enter_its_cgroup_does_not_run(tmp_path: Path, tree: FakeKernel) -> None:
    made = FakeKernel.make

    def unwritable(self: FakeKernel, name: str, *, cpu: float | None, memory_mb: int | None) -> ProgramCgroup:
        group = made(self, name, cpu=cpu, memory_mb=memory_mb)
        (group.path / "cgroup.procs").mkdir()  # writing a pid to it fails
        return group

    marker = tmp_path / "ran"
    op = await opened(tmp_path, tree, [PY, "-c", f"open({str(marker)!r}, 'w')"], cpu=0.5, memory_mb=64)
    try:
        with pytest.MonkeyPatch.context() as m:
            m.setattr(FakeKernel, "make", unwritable)
            with pytest.raises(CgroupError, match=r"cannot move the program into cgroup .*/echo-df-1-proc-"):
                await op.process_batch([{"v": 1}])
    finally:
        await op.close()
    assert not marker.exists()
    assert not any(g.path.exists() for g in tree.made), "its cgroup was left behind"


def test_the_agent_says_once_how_resources_are_enforced(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level("INFO", logger="echo_agent.runtimes.sandbox")
    sandbox = Sandbox.for_agent(cgroups=True, cgroup_root=tmp_path / "none")
    assert sandbox.cgroups is None
    assert (
        f"enforced by rlimits and a CPU watch (not cgroups v2: no cgroup v2 hierarchy at {tmp_path / 'none'})"
        in (caplog.text)
    )
    caplog.clear()
    assert Sandbox.for_agent(cgroups=False).cgroups is None and "cgroups" not in caplog.text
