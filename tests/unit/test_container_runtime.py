"""The container runtime without a Docker engine: the requests it makes (pure functions), the
attach stream's framing, and the whole operator against a stand-in engine on a Unix socket
that speaks the Engine API endpoints the runtime uses (its boundary)."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import orjson
import pytest
from pydantic import ValidationError

from echo_agent.operators import TaskContext, build, implementations
from echo_agent.runtimes import container_runtime, detect, docker_api
from echo_agent.runtimes.container_runtime import Pipe, create_request, image_reference
from echo_agent.runtimes.docker_api import STDERR, STDOUT, Demux, EngineError, EngineUnavailable, frame
from echo_agent.runtimes.gating import RuntimePolicy
from echo_agent.runtimes.stdio import Run, RunFailed
from echo_shared.catalogue import Kind
from echo_shared.catalogue.runtimes import ContainerConfig
from echo_shared.messages import DeployTask
from echo_shared.models import Resources
from echo_shared.operators import lookup


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


# ------------------------------------------------------------------------- pure pieces


def test_catalogue_entry_and_kinds() -> None:
    info = lookup("container")
    assert info is not None and info.runtime == "container"
    assert "container" in implementations()
    assert info.kinds_for({"image": "a"}) == (Kind.records, Kind.records)
    cfg = {"image": "a", "mode": "file", "command": ["conv", "{input}", "{output}"], "output": "{stem}.jpg"}
    assert info.kinds_for(cfg) == (Kind.files, Kind.files)
    with pytest.raises(ValidationError, match=r"file mode needs \{input\} in command"):
        build("container", {"image": "a", "mode": "file"})
    with pytest.raises(ValidationError, match="image"):
        build("container", {"command": ["x"]})


def test_create_request_for_a_lines_container() -> None:
    cfg = ContainerConfig(image="registry.local/tools/double:2", command=["double", "--fast"], env={"K": "v"})
    body = create_request(cfg, dataflow="df-1", task="dbl", device="fog-1")
    assert body == {
        "Image": "registry.local/tools/double:2",
        "Cmd": ["double", "--fast"],
        "Env": ["ECHO_DATAFLOW=df-1", "ECHO_TASK=dbl", "ECHO_DEVICE=fog-1", "K=v"],
        "AttachStdin": True,
        "AttachStdout": True,
        "AttachStderr": True,
        "OpenStdin": True,
        "StdinOnce": True,
        "Tty": False,
        "Labels": {"echo.dataflow": "df-1", "echo.task": "dbl", "echo.device": "fog-1"},
        "HostConfig": {"AutoRemove": True, "NetworkMode": "none"},
    }


def test_create_request_for_a_file_run_mounts_input_and_output(tmp_path: Path) -> None:
    cfg = ContainerConfig(
        image="imagemagick:7",
        mode="file",
        entrypoint=["/bin/convert"],
        command=["{input}", "-resize", "50%", "{output}"],
        output="small/{stem}.jpg",
        workdir="/work",
        network="bridge",
        memory_mb=256,
        cpus=0.5,
    )
    run = Run(tmp_path / "incoming" / "f-17.png", tmp_path / "output" / "small" / "cat.jpg")
    body = create_request(cfg, dataflow="df-1", task="shrink", device="edge-2", run=run)
    assert body["Entrypoint"] == ["/bin/convert"]
    assert body["Cmd"] == ["/echo/in/f-17.png", "-resize", "50%", "/echo/out/cat.jpg"]
    assert body["WorkingDir"] == "/work"
    assert body["HostConfig"] == {
        "AutoRemove": True,
        "NetworkMode": "bridge",
        "Binds": [
            f"{tmp_path}/incoming/f-17.png:/echo/in/f-17.png:ro",
            f"{tmp_path}/output/small:/echo/out:rw",
        ],
        "Memory": 256 * 1024 * 1024,
        "NanoCpus": 500_000_000,
    }


def test_image_references_get_a_tag() -> None:
    assert image_reference("busybox") == "busybox:latest"
    assert image_reference("localhost:5000/tools/x") == "localhost:5000/tools/x:latest"
    assert image_reference("busybox:1.36") == "busybox:1.36"
    assert image_reference("busybox@sha256:abc") == "busybox@sha256:abc"


def test_demux_splits_frames_across_reads() -> None:
    data = frame(STDOUT, b'{"a": 1}\n') + frame(STDERR, b"warn\n") + frame(STDOUT, b"x" * 70_000)
    demux = Demux()
    got: list[tuple[int, bytes]] = []
    for i in range(0, len(data), 5):
        got.extend(demux.feed(data[i : i + 5]))
    assert got == [(STDOUT, b'{"a": 1}\n'), (STDERR, b"warn\n"), (STDOUT, b"x" * 70_000)]
    assert demux.buf == b""


async def test_pipe_bounds_the_buffer_unless_the_reader_needs_more() -> None:
    pipe = Pipe(high=10, limit=100)
    await pipe.write(b"0123456789")
    blocked = asyncio.ensure_future(pipe.write(b"more\n"))
    await asyncio.sleep(0.01)
    assert not blocked.done()  # full: the writer waits
    assert await pipe.readline() == b"0123456789more\n"  # the reader needed more: let in
    await blocked
    pipe.end()
    assert await pipe.read() == b""


# ------------------------------------------------------------------------- no engine


def test_available_reports_no_engine_and_caches_it(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    url = f"unix://{tmp_path}/none.sock"
    monkeypatch.setenv("DOCKER_HOST", url)
    calls: list[str] = []
    real = docker_api.ping_sync

    def counting(u: str) -> str | None:
        calls.append(u)
        return real(u)

    monkeypatch.setattr(container_runtime, "ping_sync", counting)
    monkeypatch.setattr(container_runtime, "_pings", {})
    reason = container_runtime.available()
    assert reason is not None and reason.startswith(f"no Docker engine at {url}: ")
    assert detect()["container"] == reason
    assert calls == [url]  # asked once


def test_ping_gives_up_within_its_timeout(tmp_path: Path) -> None:
    path = tmp_path / "silent.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as silent:  # accepts, never answers
        silent.bind(str(path))
        silent.listen()
        start = time.monotonic()
        reason = docker_api.ping_sync(f"unix://{path}", timeout=0.3)
        assert time.monotonic() - start < 1.0
    assert reason is not None and reason.startswith(f"no Docker engine at unix://{path}: ")


async def test_open_without_an_engine_fails_with_a_clear_reason(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    url = f"unix://{tmp_path}/none.sock"
    monkeypatch.setenv("DOCKER_HOST", url)
    op = build("container", {"image": "busybox:1.36", "command": ["cat"]})
    with pytest.raises(EngineUnavailable, match=f"no Docker engine at {url}: "):
        await op.open(TaskContext("df-1", "c", "edge-1", 1, tmp_path / "task"))


# ------------------------------------------------------------------------- a stand-in engine


class FakeContainer:
    def __init__(self, cid: str, body: dict[str, Any]) -> None:
        self.cid, self.body = cid, body
        self.stdio: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None = None
        self.exit: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self.waiting = False
        self.oom = False  # the engine OOM-killed it
        self.subscribed = False  # to its events
        self.runner: asyncio.Task[None] | None = None

    async def run(self) -> None:
        assert self.stdio is not None
        reader, writer = self.stdio
        cmd = self.body.get("Cmd") or []
        code = 0
        try:
            if cmd[0] == "double":  # lines: {"x": n} -> {"x": 2n}
                while line := await reader.readline():
                    writer.write(frame(STDOUT, orjson.dumps({"x": 2 * orjson.loads(line)["x"]}) + b"\n"))
            elif cmd[0] == "count":  # batch: all records -> {"n": count}
                data = await reader.read()
                writer.write(frame(STDOUT, orjson.dumps({"n": len(data.splitlines())}) + b"\n"))
            elif cmd[0] == "fail":
                await reader.readline()
                writer.write(frame(STDERR, b"boom in container\n"))
                code = int(cmd[1])
            elif cmd[0] == "sleep":
                await asyncio.Event().wait()
            elif cmd[0] == "hog":  # what the kernel does to one above its memory.max
                await reader.readline()
                self.oom, code = "Memory" in self.body["HostConfig"], 137
            elif cmd[0] == "killed":  # SIGKILL from elsewhere (docker kill)
                await reader.readline()
                code = 137
            await writer.drain()
        except asyncio.CancelledError:
            code = 137
        finally:
            writer.close()
            if not self.exit.done():
                self.exit.set_result(code)


class FakeEngine:
    """The Engine API endpoints the runtime uses, on a Unix socket."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.images = {"echo/fake:1"}
        self.calls: list[str] = []
        self.containers: dict[str, FakeContainer] = {}
        self.events = True  # answers /events (an engine that does not: 500)
        self.server: asyncio.Server | None = None

    async def __aenter__(self) -> FakeEngine:
        self.server = await asyncio.start_unix_server(self.handle, str(self.path))
        return self

    async def __aexit__(self, *exc: object) -> None:
        for c in self.containers.values():
            if c.runner is not None:
                c.runner.cancel()
        assert self.server is not None
        self.server.close()

    @staticmethod
    def respond(writer: asyncio.StreamWriter, status: int, body: Any = None) -> None:
        data = b"" if body is None else orjson.dumps(body)
        head = f"HTTP/1.1 {status} X\r\nContent-Type: application/json\r\nContent-Length: {len(data)}\r\n\r\n"
        writer.write(head.encode() + data)

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        method, target, _ = (await reader.readline()).decode().split(" ", 2)
        headers = {}
        while (line := await reader.readline()) not in (b"\r\n", b""):
            k, _, v = line.decode().partition(":")
            headers[k.strip().lower()] = v.strip()
        body = (
            orjson.loads(await reader.readexactly(int(headers["content-length"])))
            if "content-length" in headers
            else None
        )
        url = urlsplit(target)
        path, query = url.path, {k: v[0] for k, v in parse_qs(url.query).items()}
        self.calls.append(f"{method} {path}" + (f"?{url.query}" if url.query else ""))
        parts = path.strip("/").split("/")
        try:
            if path == "/_ping":
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nOK")
            elif parts[0] == "images" and method == "GET":
                name = path[len("/images/") : -len("/json")]
                self.respond(
                    writer,
                    200 if image_reference(name) in self.images else 404,
                    {"message": f"No such image: {name}"},
                )
            elif path == "/images/create":
                ref = query["fromImage"]
                status = {"error": "pull access denied"} if ref.startswith("private/") else {"status": "done"}
                self.images.add(ref)
                chunk = orjson.dumps(status) + b"\n"
                writer.write(
                    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
                    + f"{len(chunk):x}\r\n".encode()
                    + chunk
                    + b"\r\n0\r\n\r\n"
                )
            elif path == "/containers/create":
                assert body is not None
                if image_reference(body["Image"]) not in self.images:
                    self.respond(writer, 404, {"message": f"No such image: {body['Image']}"})
                else:
                    cid = f"c{len(self.containers) + 1}"
                    self.containers[cid] = FakeContainer(cid, body)
                    self.respond(writer, 201, {"Id": cid, "Warnings": []})
            elif parts[0] == "containers" and parts[-1] == "attach":
                c = self.containers[parts[1]]
                writer.write(b"HTTP/1.1 101 UPGRADED\r\nConnection: Upgrade\r\nUpgrade: tcp\r\n\r\n")
                c.stdio = (reader, writer)
                await c.exit
                return
            elif parts[0] == "containers" and parts[-1] == "wait":
                assert query == {"condition": "removed"}
                c = self.containers[parts[1]]
                writer.write(
                    b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
                )
                await writer.drain()
                c.waiting = True
                code = await c.exit
                chunk = orjson.dumps({"StatusCode": code, "Error": None}) + b"\n"
                writer.write(f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n0\r\n\r\n")
            elif path == "/events" and self.events:
                filters = orjson.loads(query["filters"])
                assert filters["event"] == ["oom", "die"] and filters["type"] == ["container"]
                (cid,) = filters["container"]
                c = self.containers[cid]
                writer.write(
                    b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
                )
                await writer.drain()
                c.subscribed = True
                await c.exit
                for action in ["oom", "die"] if c.oom else ["die"]:
                    event = {"status": action, "id": cid, "Type": "container", "Action": action}
                    chunk = orjson.dumps(event) + b"\n"
                    writer.write(f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n")
                    await writer.drain()
                return  # an engine keeps the stream open: the client ends it
            elif parts[0] == "containers" and parts[-1] == "start":
                c = self.containers[parts[1]]
                assert c.stdio is not None and c.waiting, "attach and wait before start"
                assert c.subscribed or not self.events, "the events before start"
                c.runner = asyncio.create_task(c.run())
                self.respond(writer, 204)
            elif parts[0] == "containers" and method == "DELETE":
                c = self.containers[parts[1]]
                if c.exit.done():
                    self.respond(writer, 404, {"message": "No such container"})
                else:
                    assert c.runner is not None
                    c.runner.cancel()
                    self.respond(writer, 204)
            else:
                self.respond(writer, 500, {"message": f"unexpected {method} {path}"})
            await writer.drain()
        finally:
            writer.close()


@pytest.fixture
async def engine(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Any:
    sock = tmp_path / "engine.sock"
    monkeypatch.setenv("DOCKER_HOST", f"unix://{sock}")
    async with FakeEngine(sock) as fake:
        yield fake


async def opened(tmp_path: Path, config: dict[str, Any]) -> Any:
    op = build("container", config)
    await op.open(TaskContext("df-1", "ctr", "fog-1", 1, tmp_path / "task"))
    return op


async def test_lines_mode_through_the_engine(engine: FakeEngine, tmp_path: Path) -> None:
    assert await asyncio.to_thread(docker_api.ping_sync, f"unix://{engine.path}") is None
    engine.calls.clear()
    op = await opened(tmp_path, {"image": "echo/fake:1", "command": ["double"]})
    out: list[dict[str, Any]] = []
    for i in range(200):
        out.extend(await op.process({"x": i}))
    out.extend(await op.close())
    assert out == [{"x": 2 * i} for i in range(200)]
    assert engine.calls[:2] == ["GET /_ping", "GET /images/echo/fake:1/json"]
    assert [c.split("?")[0] for c in engine.calls[2:7]] == [
        "POST /containers/create",
        "POST /containers/c1/attach",
        "POST /containers/c1/wait",
        "GET /events",
        "POST /containers/c1/start",
    ]
    body = engine.containers["c1"].body
    assert body["HostConfig"]["AutoRemove"] and body["OpenStdin"] and body["StdinOnce"]
    assert body["Labels"]["echo.task"] == "ctr"


async def test_batch_mode_runs_a_container_per_batch(engine: FakeEngine, tmp_path: Path) -> None:
    op = await opened(tmp_path, {"image": "echo/fake:1", "command": ["count"], "mode": "batch"})
    assert op.wants_batches
    assert await op.process_batch([{"v": i} for i in range(7)]) == [{"n": 7}]
    assert await op.process_batch([{"v": 1}]) == [{"n": 1}]
    assert len(engine.containers) == 2


async def test_a_failing_container_reports_exit_code_and_stderr(engine: FakeEngine, tmp_path: Path) -> None:
    op = await opened(tmp_path, {"image": "echo/fake:1", "command": ["fail", "4"], "mode": "batch"})
    with pytest.raises(RunFailed, match=r"exited with code 4; stderr: boom in container") as err:
        await op.process_batch([{"v": 1}])
    assert err.value.code == 4 and "echo/fake:1" in str(err.value)


async def test_a_container_ignoring_eof_is_removed(engine: FakeEngine, tmp_path: Path) -> None:
    op = await opened(tmp_path, {"image": "echo/fake:1", "command": ["sleep"], "timeout": 0.3})
    assert await op.process({"x": 1}) == []
    with pytest.raises(RunFailed, match=r"did not exit within 0.3s after its input ended \(killed\)"):
        await op.close()
    assert "DELETE /containers/c1?force=1" in engine.calls


async def test_missing_images_are_pulled_or_refused(engine: FakeEngine, tmp_path: Path) -> None:
    with pytest.raises(EngineError, match=r"image other:2 is not on device fog-1 \(pull: never\)"):
        await opened(tmp_path, {"image": "other:2", "command": ["double"], "pull": "never"})
    op = await opened(tmp_path, {"image": "tools/double", "command": ["double"]})
    assert "POST /images/create?fromImage=tools%2Fdouble%3Alatest" in engine.calls
    with contextlib.suppress(Exception):
        await op.close()
    with pytest.raises(EngineError, match="pull access denied"):
        await opened(tmp_path, {"image": "private/x:1", "command": ["double"], "pull": "always"})


# ------------------------------------------------------------------------- the task's resources


def test_the_tasks_resources_are_the_limits_the_config_does_not_set() -> None:
    bare = ContainerConfig(image="a", command=["x"])
    host = create_request(bare, dataflow="d", task="t", device="e", memory_mb=64, cpu=0.25)["HostConfig"]
    assert host["Memory"] == 64 * 1024 * 1024 and host["NanoCpus"] == 250_000_000
    tiny = create_request(bare, dataflow="d", task="t", device="e", memory_mb=2, cpu=0)["HostConfig"]
    assert tiny["Memory"] == 6 * 1024 * 1024, "below the engine's smallest limit"
    assert "NanoCpus" not in tiny
    none = create_request(bare, dataflow="d", task="t", device="e", memory_mb=0, cpu=None)["HostConfig"]
    assert "Memory" not in none and "NanoCpus" not in none
    own = ContainerConfig(image="a", command=["x"], memory_mb=512, cpus=2)
    host = create_request(own, dataflow="d", task="t", device="e", memory_mb=64, cpu=0.25)["HostConfig"]
    assert host["Memory"] == 512 * 1024 * 1024 and host["NanoCpus"] == 2_000_000_000


def deploy(config: dict[str, Any], resources: Resources) -> Any:
    """The operator as an agent offering ``container`` builds it for a deploy."""
    policy = RuntimePolicy.decide("fog-1", ["container"], usable=lambda name: None)
    cmd = DeployTask(
        cmd_id="c-1",
        dataflow="df-1",
        task="ctr",
        generation=1,
        operator="container",
        config=config,
        resources=resources,
    )
    return policy.build(cmd)


async def test_a_deployed_container_gets_its_tasks_resources(engine: FakeEngine, tmp_path: Path) -> None:
    op = deploy(
        {"image": "echo/fake:1", "command": ["count"], "mode": "batch"}, Resources(cpu=0.5, memory_mb=96)
    )
    await op.open(TaskContext("df-1", "ctr", "fog-1", 1, tmp_path / "task"))
    assert await op.process_batch([{"v": 1}]) == [{"n": 1}]
    host = engine.containers["c1"].body["HostConfig"]
    assert host["Memory"] == 96 * 1024 * 1024 and host["NanoCpus"] == 500_000_000


async def test_an_oom_killed_container_fails_its_task_naming_the_limit(
    engine: FakeEngine, tmp_path: Path
) -> None:
    op = deploy({"image": "echo/fake:1", "command": ["hog"], "mode": "batch"}, Resources(memory_mb=64))
    await op.open(TaskContext("df-1", "ctr", "fog-1", 1, tmp_path / "task"))
    with pytest.raises(RunFailed, match=r"memory limit exceeded: 64 MiB \(resources\.memory_mb\)") as err:
        await op.process_batch([{"v": 1}])
    assert err.value.code == 137
    # the config's own limit is named as such; in lines mode, at the next record
    op = deploy({"image": "echo/fake:1", "command": ["hog"], "memory_mb": 32}, Resources(memory_mb=64))
    await op.open(TaskContext("df-1", "ctr", "fog-1", 1, tmp_path / "task"))
    await op.process({"v": 1})
    assert await asyncio.wait_for(asyncio.shield(op.lines.exited), 10) == 137
    with pytest.raises(RunFailed, match=r"memory limit exceeded: 32 MiB \(memory_mb of its config\)"):
        await op.process({"v": 2})
    with pytest.raises(RunFailed, match="memory limit exceeded"):
        await op.close()


async def test_a_container_killed_otherwise_is_not_called_out_of_memory(
    engine: FakeEngine, tmp_path: Path
) -> None:
    op = deploy({"image": "echo/fake:1", "command": ["killed"], "mode": "batch"}, Resources(memory_mb=64))
    await op.open(TaskContext("df-1", "ctr", "fog-1", 1, tmp_path / "task"))
    with pytest.raises(RunFailed, match=r"exited with code 137; no stderr output") as err:
        await op.process_batch([{"v": 1}])
    assert "memory" not in str(err.value)
    # an engine that would not give its events: exit 137 under a limit is only a maybe
    engine.events = False
    with pytest.raises(
        RunFailed, match=r"exited with code 137 \(killed: memory limit 64 MiB may have been exceeded\)"
    ):
        await op.process_batch([{"v": 1}])
