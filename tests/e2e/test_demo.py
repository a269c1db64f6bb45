"""The demo as a user runs it: ``echoctl dev up --submit examples/demo/dataflow.yaml``.

Starts the real thing as a subprocess in a fresh directory, waits for the dataflow to run
and its sink to hold every record exactly once, checks ``echoctl get dataflows -o json``,
then stops it with SIGTERM and checks that it exits 0 and no child process survives.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import httpx
import psutil
import pytest

from echo_shared.credentials import client_tls

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parents[2]
DEMO = REPO / "examples" / "demo" / "dataflow.yaml"
ECHOCTL = Path(sys.executable).parent / "echoctl"
COUNT = 2000

T = TypeVar("T")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Output:
    """Collects a subprocess's output lines on a thread (so its pipe never fills up)."""

    def __init__(self, proc: subprocess.Popen[str]) -> None:
        self.lines: list[str] = []
        self._proc = proc
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        assert self._proc.stdout is not None
        for line in self._proc.stdout:
            self.lines.append(line.rstrip("\n"))

    def text(self) -> str:
        return "\n".join(self.lines)

    def join(self, timeout: float) -> None:
        self._thread.join(timeout)


def poll(
    what: str, check: Callable[[], T | None], proc: subprocess.Popen[str], out: Output, timeout: float
) -> T:
    """Call ``check`` until it returns something truthy; fail if ``proc`` dies or time runs out."""
    deadline = time.monotonic() + timeout
    while True:
        got = check()
        if got:
            return got
        if proc.poll() is not None:
            pytest.fail(f"echoctl dev up exited ({proc.returncode}) while waiting for {what}:\n{out.text()}")
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout}s waiting for {what}:\n{out.text()}")
        time.sleep(0.1)


def read_env(path: Path) -> dict[str, str] | None:
    if not path.exists():
        return None
    text = path.read_text()
    pairs = dict(line.split("=", 1) for line in text.splitlines() if "=" in line and not line.startswith("#"))
    return pairs if "ECHO_REDIS_URL" in pairs else None  # written whole, but be safe


def sink_seqs(path: Path) -> list[int]:
    if not path.exists():
        return []
    data = path.read_bytes()
    complete = data[: data.rfind(b"\n") + 1]  # a line still being written is not a record yet
    return [json.loads(line)["seq"] for line in complete.splitlines() if line.strip()]


def echoctl(env: dict[str, str], *args: str) -> Any:
    done = subprocess.run([str(ECHOCTL), *args], env=env, capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def show_logs(workdir: Path) -> None:
    for log in sorted((workdir / ".echo" / "dev" / "logs").glob("*.log")):
        print(f"----- {log.name} -----\n{log.read_text(errors='replace')[-4000:]}")


@pytest.mark.timeout(240)
def test_dev_up_runs_the_demo_and_stops_cleanly(tmp_path: Path) -> None:
    shutil.copy(DEMO, tmp_path / "dataflow.yaml")
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("ECHO_")}
    env["PYTHONUNBUFFERED"] = "1"
    proc = subprocess.Popen(
        [str(ECHOCTL), "dev", "up", "--submit", "dataflow.yaml", "--api-port", str(port)],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        text=True,
        start_new_session=True,
    )
    out = Output(proc)
    children: list[psutil.Process] = []
    ok = False
    try:
        # 1. the platform is up and says where
        dev_env = poll(".echo/dev.env", lambda: read_env(tmp_path / ".echo" / "dev.env"), proc, out, 120)
        assert dev_env["ECHO_API_URL"] == f"https://127.0.0.1:{port}"  # the API over TLS too
        assert dev_env["ECHO_NAMESPACE"] == "echo"
        for key, scheme in (  # TLS everywhere
            ("ECHO_NATS_URL", "tls://"),
            ("ECHO_MQTT_URL", "mqtts://"),
            ("ECHO_REDIS_URL", "rediss://"),
        ):
            assert dev_env[key].startswith(scheme)
        # the admin token and the CA, in a file only its owner reads
        assert dev_env["ECHO_TOKEN"].startswith("echo_")
        assert Path(dev_env["ECHO_CA_FILE"]).read_text().startswith("-----BEGIN CERTIFICATE-----")
        assert (tmp_path / ".echo" / "dev.env").stat().st_mode & 0o777 == 0o600
        urls = [dev_env[k] for k in ("ECHO_API_URL", "ECHO_NATS_URL", "ECHO_MQTT_URL", "ECHO_REDIS_URL")]
        poll("the URLs printed", lambda: all(u in out.text() for u in urls), proc, out, 10)
        assert (tmp_path / ".echo" / "dev").is_dir()
        # Prometheus scrapes the stack, over HTTPS, for its login only
        assert dev_env["ECHO_PROMETHEUS_URL"].startswith("https://127.0.0.1:")
        password_file = Path(dev_env["ECHO_PROMETHEUS_PASSWORD_FILE"])
        assert password_file.stat().st_mode & 0o077 == 0
        login = (dev_env["ECHO_PROMETHEUS_USER"], password_file.read_text().strip())
        query = f"{dev_env['ECHO_PROMETHEUS_URL']}/api/v1/query"
        ca = client_tls(Path(dev_env["ECHO_CA_FILE"]))

        def scraped() -> bool:
            try:
                r = httpx.get(query, params={"query": "sum(up)"}, auth=login, verify=ca, timeout=5)
                result = r.json()["data"]["result"]
            except (httpx.HTTPError, ValueError, KeyError):
                return False
            return bool(result) and result[0]["value"][1] == "4"  # master, registry, scheduler, migrator

        poll("Prometheus scraping the four services", scraped, proc, out, 60)
        assert httpx.get(query, params={"query": "up"}, verify=ca, timeout=5).status_code == 401
        children = psutil.Process(proc.pid).children(recursive=True)

        # 2. the demo dataflow runs and its output lands where echoctl says
        pattern = re.compile(r"dataflow (df-\S+) is (running|completed)")
        match = poll("the dataflow to run", lambda: pattern.search(out.text()), proc, out, 60)
        df_id = match.group(1)
        where = "output of task sink on cloud-1: .echo/demo-out.jsonl"
        poll("where the output is", lambda: where in out.text(), proc, out, 10)
        sink = tmp_path / ".echo" / "demo-out.jsonl"
        poll(f"{COUNT} records in the sink", lambda: len(sink_seqs(sink)) >= COUNT, proc, out, 90)

        # 3. what the API says, through echoctl and the env file, matches
        cli_env = {**env, **dev_env}

        def completed() -> dict[str, Any] | None:
            flows = {d["id"]: d for d in echoctl(cli_env, "get", "dataflows", "-o", "json")}
            df: dict[str, Any] = flows[df_id]
            return df if df["state"] == "completed" else None

        df = poll("the dataflow to complete", completed, proc, out, 60)
        assert df["name"] == "demo"
        tasks = {t["id"]: t for t in df["tasks"]}
        placed = {k: t["device"] for k, t in tasks.items()}
        assert placed == {"gen": "edge-1", "count": "fog-1", "sink": "cloud-1"}
        assert tasks["gen"]["records_out"] == COUNT and tasks["sink"]["records_in"] == COUNT
        assert echoctl(cli_env, "get", "dataflow", df_id, "-o", "json") == df
        devices = {d["id"]: d for d in echoctl(cli_env, "get", "devices", "-o", "json")}
        assert {k: d["tier"] for k, d in devices.items()} == {
            "edge-1": "edge",
            "edge-2": "edge",
            "fog-1": "fog",
            "cloud-1": "cloud",
        }
        assert devices["edge-1"]["input_streams"] == ["taxi-feed"]

        seqs = sink_seqs(sink)
        assert sorted(seqs) == list(range(COUNT)), "each record exactly once"
        records = [json.loads(line) for line in sink.read_text().splitlines()]
        assert {r["key"] for r in records} == {"nyc"} and max(r["count"] for r in records) == COUNT

        # 4. a service, an agent and a broker killed (-9): started again, like compose's
        # `restart: unless-stopped`; the device comes back online
        def child(marker: str) -> psutil.Process:
            found = [
                c
                for c in psutil.Process(proc.pid).children(recursive=True)
                if marker in " ".join(c.cmdline())
            ]
            assert found, f"no child running {marker}"
            return found[0]

        victims = {
            "registry": child("echo_registry"),
            "mosquitto": child("mosquitto"),
            "agent-edge-2": child("edge-2"),
        }
        for p in victims.values():
            p.kill()
        for name in victims:
            poll(f"{name} restarted", lambda name=name: f"restarted {name}" in out.text(), proc, out, 60)

        def edge2_online() -> bool:
            done = subprocess.run(
                [str(ECHOCTL), "get", "devices", "-o", "json"],
                env=cli_env,
                capture_output=True,
                text=True,
                timeout=30,
            )
            if done.returncode != 0:  # the registry is still on its way back: 503 meanwhile
                assert "503" in done.stderr, done.stderr
                return False
            devices = {d["id"]: d for d in json.loads(done.stdout)}
            return devices["edge-2"]["status"] == "online" and devices["fog-1"]["status"] == "online"

        poll("edge-2 back online", edge2_online, proc, out, 60)

        # 5. SIGTERM stops everything
        children = psutil.Process(proc.pid).children(recursive=True)
        names = " ".join(" ".join(c.cmdline()) for c in children)
        assert names.count("echo_agent") == 4 and "nats-server" in names and "echo_master" in names
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0, out.text()
        out.join(5)
        assert "ECHO stopped" in out.text()
        assert "Traceback" not in out.text()
        assert not (tmp_path / ".echo" / "dev.env").exists()
        ok = True
    finally:
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)
        alive = []
        for c in children:
            with contextlib.suppress(psutil.NoSuchProcess):
                # is_running() also compares the start time, so a reused pid does not count
                if c.is_running() and c.status() != psutil.STATUS_ZOMBIE:
                    alive.append(f"{c.pid} {' '.join(c.cmdline())[:120]}")
                    c.kill()
        if not ok:
            print(out.text())
            show_logs(tmp_path)
    assert not alive, f"children outlived echoctl dev up: {alive}"
