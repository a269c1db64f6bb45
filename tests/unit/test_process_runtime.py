"""The process runtime: the three modes of the process protocol with real child processes.

The programs run confined as on a device (``echo_agent.runtimes.sandbox``): as ``nobody``
when the tests run as root, with the safe ``PATH``, so Python programs are the system's
``python3`` (the virtualenv's interpreter may sit where ``nobody`` cannot reach). What the
confinement itself guarantees is tested in ``test_runtime_sandbox.py``.
"""

from __future__ import annotations

import asyncio
import shutil
import tempfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest
from pydantic import ValidationError

from echo_agent.operators import TaskContext, build, implementations
from echo_agent.runtimes import detect, process_runtime
from echo_agent.runtimes.process_runtime import MissingOnDevice, NotPermitted
from echo_agent.runtimes.sandbox import Sandbox
from echo_agent.runtimes.stdio import RunFailed
from echo_shared.catalogue import Kind
from echo_shared.operators import lookup
from tests.harness.programs import safe_python3
from tests.harness.waiting import eventually


@pytest.fixture(autouse=True)
async def no_leaked_tasks() -> AsyncIterator[None]:
    """Every run's readers, pumps and waiters end with it."""
    before = asyncio.all_tasks()
    yield
    current = asyncio.current_task()
    leaked = [t for t in asyncio.all_tasks() - before if t is not current and not t.done()]
    for _ in range(50):  # tasks finishing their last step after close()
        if not leaked:
            break
        await asyncio.sleep(0.01)
        leaked = [t for t in leaked if not t.done()]
    assert not leaked, f"leaked asyncio tasks: {leaked}"


PY = safe_python3()

# one output per record, with the doubled seq
DOUBLE = (
    "import sys, json\n"
    "for line in sys.stdin:\n"
    "    r = json.loads(line)\n"
    "    print(json.dumps({'seq': r['seq'], 'double': 2 * r['seq']}), flush=True)\n"
)
# seq % 3 outputs per record (0, 1 or 2), block-buffered
FAN = (
    "import sys, json\n"
    "for line in sys.stdin:\n"
    "    r = json.loads(line)\n"
    "    for k in range(r['seq'] % 3):\n"
    "        print(json.dumps({'seq': r['seq'], 'k': k, 'pad': r['pad']}))\n"
)


def ctx(tmp_path: Path, device: str = "edge-7") -> TaskContext:
    return TaskContext("df-1", "proc", device, 1, tmp_path / "task")


def incoming(tmp_path: Path, name: str) -> Path:
    """Where a file edge puts an input file: in the task's directory."""
    path = tmp_path / "task" / "incoming" / name
    path.parent.mkdir(parents=True, exist_ok=True)
    return path


@pytest.fixture
def open_dir() -> Iterator[Path]:
    """A directory any user may reach (pytest's own are private to the user running it)."""
    d = Path(tempfile.mkdtemp(prefix="echo-test-"))
    d.chmod(0o755)
    try:
        yield d
    finally:
        shutil.rmtree(d, ignore_errors=True)


async def opened(tmp_path: Path, config: dict[str, Any]) -> Any:
    op = build("process", config)
    await op.open(ctx(tmp_path))
    return op


def alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def test_catalogue_entry_and_kinds() -> None:
    info = lookup("process")
    assert info is not None and info.runtime == "process"
    assert "process" in implementations()
    cmd = [PY, "x.py", "{input}"]
    assert info.kinds_for({"command": [PY]}) == (Kind.records, Kind.records)
    assert info.kinds_for({"command": [PY], "mode": "batch"}) == (Kind.records, Kind.records)
    assert info.kinds_for({"command": cmd, "mode": "file"}) == (Kind.files, Kind.records)
    file_out = {"command": [*cmd, "{output}"], "mode": "file", "output": "{stem}.out"}
    assert info.kinds_for(file_out) == (Kind.files, Kind.files)
    assert process_runtime.available() is None
    assert detect()["process"] is None


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ({"command": []}, "at least 1 item"),
        ({"command": ["cat"], "mode": "file"}, "file mode needs {input} in command"),
        ({"command": ["cp", "{input}", "x"], "mode": "file", "output": "a"}, "must use {output}"),
        ({"command": ["cp", "{input}", "{output}"], "mode": "file"}, "set output"),
        ({"command": ["cat"], "output": "a"}, "output applies only to mode: file"),
        ({"command": ["cat", "{input}"]}, "{input} in command applies only to mode: file"),
        ({"command": ["cat"], "shell": True}, "Extra inputs are not permitted"),
        ({"command": ["cat"], "timeout": 0}, "greater than 0"),
    ],
)
def test_bad_configs_are_refused_with_the_field(config: dict[str, Any], message: str) -> None:
    with pytest.raises(ValidationError, match=message.replace("{", r"\{").replace("}", r"\}")):
        build("process", config)


async def test_lines_mode_emits_what_arrives_and_the_rest_at_close(tmp_path: Path) -> None:
    op = await opened(tmp_path, {"command": [PY, "-c", FAN]})
    assert not op.wants_batches
    n, pad = 20_000, "x" * 200  # ~4 MB each way: far beyond what pipes hold
    out: list[dict[str, Any]] = []
    for i in range(n):
        out.extend(await op.process({"seq": i, "pad": pad}))
    before_close = len(out)
    out.extend(await op.close())
    assert before_close > 0  # outputs travel while input still flows
    assert [(r["seq"], r["k"]) for r in out] == [(i, k) for i in range(n) for k in range(i % 3)]


async def test_lines_mode_with_a_program_that_prints_far_more_than_it_reads(tmp_path: Path) -> None:
    # 2,000 lines of 1 KB per input: the program blocks on stdout unless we read while writing
    script = (
        "import sys\n"
        "for line in sys.stdin:\n"
        "    for k in range(2000):\n"
        '        sys.stdout.write(\'{"k": %d, "pad": "%s"}\\n\' % (k, \'y\' * 1000))\n'
    )
    op = await opened(tmp_path, {"command": [PY, "-c", script]})
    total = 0
    for i in range(20):
        total += len(await op.process({"seq": i}))
    total += len(await op.close())
    assert total == 40_000


async def test_lines_mode_with_a_program_that_reads_everything_first(tmp_path: Path) -> None:
    script = "import sys\nlines = sys.stdin.readlines()\nsys.stdout.writelines(reversed(lines))\n"
    op = await opened(tmp_path, {"command": [PY, "-c", script]})
    for i in range(5000):
        assert await op.process({"seq": i, "pad": "z" * 100}) == []
    out = await op.close()
    assert [r["seq"] for r in out] == list(range(4999, -1, -1))


async def test_lines_mode_linger_returns_a_records_output_with_it(tmp_path: Path) -> None:
    op = await opened(tmp_path, {"command": [PY, "-c", DOUBLE], "linger": 10})
    for i in range(50):
        assert await op.process({"seq": i}) == [{"seq": i, "double": 2 * i}]
    assert await op.close() == []


async def test_sh_c_is_the_way_to_a_shell(tmp_path: Path) -> None:
    op = await opened(tmp_path, {"command": ["sh", "-c", "cat | cat"], "linger": 10})
    assert await op.process({"a": "{b}"}) == [{"a": "{b}"}]
    assert await op.close() == []


async def test_lines_program_exiting_early_fails_with_code_and_stderr(tmp_path: Path) -> None:
    script = "import sys\nsys.stdin.readline()\nsys.stderr.write('boom: cannot parse\\n')\nsys.exit(3)\n"
    op = await opened(tmp_path, {"command": [PY, "-c", script]})
    with pytest.raises(RunFailed) as err:
        for i in range(10_000):  # until the exit is noticed
            await op.process({"seq": i, "pad": "p" * 1000})
            await asyncio.sleep(0.001)
    assert err.value.code == 3
    assert "exited with code 3" in str(err.value) and "boom: cannot parse" in str(err.value)
    with pytest.raises(RunFailed, match="exited with code 3"):
        await op.close()


async def test_lines_program_failing_at_the_end(tmp_path: Path) -> None:
    script = "import sys\nfor line in sys.stdin: pass\nsys.stderr.write('no total\\n')\nsys.exit(2)\n"
    op = await opened(tmp_path, {"command": [PY, "-c", script]})
    assert await op.process({"seq": 1}) == []
    with pytest.raises(RunFailed, match=r"exited with code 2; stderr: no total"):
        await op.close()


async def test_output_that_is_not_a_json_object_fails_naming_the_line(tmp_path: Path) -> None:
    script = "import sys\nfor line in sys.stdin:\n    print(line.strip())\n    print('oops', flush=True)\n"
    op = await opened(tmp_path, {"command": [PY, "-c", script]})
    with pytest.raises(ValueError, match=r"output line 2 is not JSON.*oops"):
        for i in range(1000):
            await op.process({"seq": i})
            await asyncio.sleep(0.005)
    with pytest.raises(ValueError, match="output line 2"):  # and again at the end
        await op.close()


async def test_a_program_ignoring_eof_is_killed_after_timeout(tmp_path: Path) -> None:
    op = await opened(tmp_path, {"command": ["sh", "-c", "sleep 60 & sleep 60"], "timeout": 0.5})
    pids = [c.pid for c in psutil.Process(op.lines.child.proc.pid).children(recursive=True)]
    pids.append(op.lines.child.proc.pid)
    with pytest.raises(RunFailed, match=r"did not exit within 0.5s after its input ended \(killed\)"):
        await op.close()
    await eventually(lambda: not any(alive(p) for p in pids), what="the whole process group gone")


async def test_cancelling_a_blocked_process_call_kills_the_group(tmp_path: Path) -> None:
    # the program never reads stdin: process() blocks on back-pressure until cancelled
    op = await opened(tmp_path, {"command": ["sh", "-c", "sleep 60 & sleep 60"]})
    leader = op.lines.child.proc.pid
    pids = [leader, *(c.pid for c in psutil.Process(leader).children(recursive=True))]

    async def feed() -> None:
        while True:
            await op.process({"pad": "q" * 10_000})

    task = asyncio.create_task(feed())
    await eventually(lambda: op.lines.drain is not None, what="process() waiting for stdin to drain")
    assert not task.done()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert await op.close() == []
    await eventually(lambda: not any(alive(p) for p in pids), what="no orphans")


async def test_batch_mode_runs_once_per_batch(tmp_path: Path) -> None:
    script = (
        "import sys, json, os\n"
        "rows = [json.loads(l) for l in sys.stdin]\n"
        "print(json.dumps({'n': len(rows), 'sum': sum(r['v'] for r in rows), 'task': os.environ['ECHO_TASK'],"
        " 'mine': os.environ['MINE']}))\n"
    )
    op = await opened(tmp_path, {"command": [PY, "-c", script], "mode": "batch", "env": {"MINE": "yes"}})
    assert op.wants_batches and op.batch_count == 100
    assert await op.process_batch([{"v": i} for i in range(10)]) == [
        {"n": 10, "sum": 45, "task": "proc", "mine": "yes"}
    ]
    assert await op.process_batch([{"v": 5}]) == [{"n": 1, "sum": 5, "task": "proc", "mine": "yes"}]
    assert await op.process_batch([]) == []
    assert op.runs == 2
    assert await op.close() is None


async def test_batch_run_failing_or_timing_out(tmp_path: Path) -> None:
    fail = "import sys\nsys.stdin.read()\nsys.stderr.write('bad batch\\n' * 3)\nsys.exit(5)\n"
    op = await opened(tmp_path, {"command": [PY, "-c", fail], "mode": "batch"})
    with pytest.raises(RunFailed, match=r"exited with code 5; stderr: bad batch") as err:
        await op.process_batch([{"v": 1}])
    assert err.value.code == 5
    slow = await opened(tmp_path, {"command": ["sh", "-c", "sleep 30"], "mode": "batch", "timeout": 0.3})
    with pytest.raises(RunFailed, match=r"timed out after 0.3s \(killed\)"):
        await slow.process_batch([{"v": 1}])


async def test_file_mode_file_to_file(tmp_path: Path) -> None:
    script = "import sys\nopen(sys.argv[2], 'w').write(open(sys.argv[1]).read().upper())\n"
    op = await opened(
        tmp_path,
        {
            "command": [PY, "-c", script, "{input}", "{output}"],
            "mode": "file",
            "output": "up/{stem}.up{suffix}",
        },
    )
    src = incoming(tmp_path, "hello.txt")
    src.write_text("hello world")
    [out] = await op.process({"path": str(src), "name": "hello.txt", "size": 11, "camera": 7})
    assert out["name"] == "hello.up.txt" and out["size"] == 11 and out["source"] == "hello.txt"
    assert out["camera"] == 7
    assert Path(out["path"]) == tmp_path / "task" / "output" / "1-1" / "up" / "hello.up.txt"
    assert await asyncio.to_thread(Path(out["path"]).read_text) == "HELLO WORLD"


async def test_file_mode_file_to_records_and_a_missing_output(tmp_path: Path) -> None:
    src = incoming(tmp_path, "data.bin")
    src.write_bytes(b"x" * 1234)
    count = "import sys, json, os\nprint(json.dumps({'bytes': os.path.getsize(sys.argv[1])}))\n"
    op = await opened(tmp_path, {"command": [PY, "-c", count, "{input}"], "mode": "file"})
    rec = {"path": str(src), "name": "data.bin", "size": 1234, "site": "north"}
    assert await op.process(rec) == [{"name": "data.bin", "site": "north", "bytes": 1234}]
    lazy = await opened(
        tmp_path, {"command": ["true", "{input}", "{output}"], "mode": "file", "output": "{name}.out"}
    )
    with pytest.raises(
        RunFailed, match=r"exited with code 0 but did not write its \{output\} file .*data.bin.out"
    ):
        await lazy.process(rec)


async def test_default_cwd_is_the_programs_own_directory_and_cwd_is_honoured(tmp_path: Path) -> None:
    script = (
        "import os, json\n"
        "open('scratch', 'w').write('mine')\n"  # its own directory is writable
        "env = os.environ\n"
        "print(json.dumps({'cwd': os.getcwd(), 'dir': env['ECHO_DATA_DIR'], 'home': env['HOME']}))\n"
    )
    op = await opened(tmp_path, {"command": [PY, "-c", script], "mode": "batch"})
    work = str(tmp_path / "task" / "work")
    assert await op.process_batch([{"v": 1}]) == [{"cwd": work, "dir": work, "home": work}]
    assert (tmp_path / "task" / "work" / "scratch").read_text() == "mine"
    pwd = ["sh", "-c", 'echo "{\\"cwd\\": \\"$(pwd)\\"}"']
    op = await opened(tmp_path, {"command": pwd, "mode": "batch", "cwd": str(tmp_path)})
    assert await op.process_batch([{"v": 1}]) == [{"cwd": str(tmp_path)}]


async def test_missing_paths_fail_open_naming_path_and_device(tmp_path: Path, open_dir: Path) -> None:
    with pytest.raises(MissingOnDevice, match=r"cwd /nowhere/at/all does not exist on device edge-7"):
        await opened(tmp_path, {"command": ["cat"], "cwd": "/nowhere/at/all"})
    with pytest.raises(
        MissingOnDevice, match=r"program 'no-such-tool-x' not found on the PATH of device edge-7"
    ):
        await opened(tmp_path, {"command": ["no-such-tool-x"]})
    with pytest.raises(MissingOnDevice, match=r"program /opt/none/run.sh does not exist on device edge-7"):
        await opened(tmp_path, {"command": ["/opt/none/run.sh"]})
    script = open_dir / "run.sh"
    script.write_text("#!/bin/sh\ncat\n")
    with pytest.raises(MissingOnDevice, match=r"run.sh is not executable on device edge-7"):
        await opened(tmp_path, {"command": [str(script)]})
    script.chmod(0o755)
    op = await opened(tmp_path, {"command": [str(script)], "linger": 10})
    assert await op.process({"ok": True}) == [{"ok": True}]
    assert await op.close() == []


async def test_a_program_its_user_cannot_reach_fails_naming_the_user(tmp_path: Path) -> None:
    sandbox = Sandbox.default()
    if not sandbox.switches:
        pytest.skip("the tests do not run as root: programs run as this user")
    private = tmp_path / "private"  # pytest's temporary directories are 0700
    private.mkdir()
    script = private / "run.sh"
    script.write_text("#!/bin/sh\ncat\n")
    script.chmod(0o755)
    with pytest.raises(
        NotPermitted, match=rf"user {sandbox.user} may not run {script} on device edge-7: directory"
    ):
        await opened(tmp_path, {"command": [str(script)]})
