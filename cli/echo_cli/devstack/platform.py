"""The five services and a fleet of agents as local processes, against running brokers."""

from __future__ import annotations

import contextlib
import ssl
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from echo_shared.credentials import client_tls
from echo_shared.secretfiles import new_secret, write_secret

from .brokers import Brokers
from .monitoring import SCRAPE_INTERVAL, Prometheus, start_prometheus
from .processes import START_ATTEMPTS, ManagedProcess, PortTaken, free_port, wait_for_own_ports, wait_for_port

SERVICES = ("registry", "scheduler", "migrator", "master")
# services that run replicated: the master's, the migrator's and the registry's replicas elect
# a leader (echo_shared.leases); the scheduler is stateless, its replicas share requests (NATS
# queue). Every master replica serves the API, each on a port of its own.
REPLICATED = ("master", "migrator", "scheduler", "registry")
LEASED = ("master", "migrator", "registry")  # those whose replicas elect a leader
REPLICA_START_TIMEOUT = 60.0  # until a master replica started holds its API port


def replica_of(name: str) -> tuple[str, int] | None:
    """(service, replica) of a replica's process name (``master-2``); None for a service's."""
    base, _, n = name.rpartition("-")
    return (base, int(n)) if base in REPLICATED and n.isdigit() else None


@dataclass(frozen=True)
class AgentSpec:
    device_id: str
    tier: str
    input_streams: tuple[str, ...] = ()
    labels: tuple[tuple[str, str], ...] = ()
    cpu: float | None = None
    memory_mb: int | None = None
    nats: bool | None = None  # reaches NATS (default: fog and cloud do, edge does not)
    brokers: tuple[str, ...] = ()  # data brokers declared (default: the agent decides)
    runtimes: tuple[str, ...] = ()  # extra runtimes enabled (``process``, ``container``: off by default)

    @property
    def reaches_nats(self) -> bool:
        if self.brokers:
            return "nats" in self.brokers
        return self.nats if self.nats is not None else self.tier != "edge"

    def argv(self) -> list[str]:
        out = ["--device-id", self.device_id, "--tier", self.tier]
        for s in self.input_streams:
            out += ["--input-stream", s]
        for k, v in self.labels:
            out += ["--label", f"{k}={v}"]
        if self.cpu is not None:
            out += ["--cpu", str(self.cpu)]
        if self.memory_mb is not None:
            out += ["--memory-mb", str(self.memory_mb)]
        for b in self.brokers:
            out += ["--broker", b]
        for r in self.runtimes:
            out += ["--runtime", r]
        return out


DEFAULT_FLEET = (
    AgentSpec("edge-1", "edge", input_streams=("taxi-feed",), cpu=1.0, memory_mb=512),
    AgentSpec("edge-2", "edge", cpu=1.0, memory_mb=512),
    AgentSpec("fog-1", "fog", cpu=2.0, memory_mb=2048),
    AgentSpec("cloud-1", "cloud", cpu=4.0, memory_mb=8192),
)


@dataclass
class Platform:
    """ECHO on one machine. ``start()`` returns when the API answers and the fleet registered."""

    brokers: Brokers
    workdir: Path
    namespace: str = "echo"
    api_port: int = 0
    # the API port was asked for (kept, an error if taken) rather than chosen here (another
    # is chosen when the master finds it taken in between)
    api_port_fixed: bool = False
    host: str = "127.0.0.1"
    extra_env: dict[str, str] = field(default_factory=dict)
    api_tls: bool | None = None  # None: HTTPS when the brokers are secured (the bundle's certificate)
    metrics: bool | None = None  # None: each service serves /metrics (mutual TLS) when secured
    services: dict[str, ManagedProcess] = field(default_factory=dict)
    agents: dict[str, ManagedProcess] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.api_tls is None:
            self.api_tls = self.brokers.bundle is not None
        if self.metrics is None or self.brokers.bundle is None:
            self.metrics = self.brokers.bundle is not None
        # each service's metrics endpoint: a port of its own, kept across restarts of a service
        self.metrics_ports: dict[str, int] = {}
        self.replica_api_ports: dict[int, int] = {}  # master replica -> its API port
        if self.metrics:
            for name in SERVICES:
                self.metrics_ports[name] = self.new_port()
        self.prometheus: Prometheus | None = None
        if not self.api_port:
            self.api_port = self.new_port()
            self.api_port_fixed = False
        # this stack's master says so in /healthz: the API we report is ours, not whatever
        # else listens on the port
        self.boot_id = uuid.uuid4().hex
        self.workdir.mkdir(parents=True, exist_ok=True)
        # the first admin token: the master registers it at start (``ECHO_ADMIN_TOKEN_FILE``);
        # kept across restarts of a persistent stack
        self.admin_token_file = self.workdir / "secrets" / "admin.token"
        if not self.admin_token_file.exists():
            write_secret(self.admin_token_file, "echo_" + new_secret())
        self.admin_token = self.admin_token_file.read_text().strip()

    def new_port(self) -> int:
        """A free port none of this stack's servers was given (they bind theirs later)."""
        given = {self.api_port, *self.metrics_ports.values(), *self.replica_api_ports.values()}
        return free_port(self.host, exclude=given)

    def http_headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.admin_token}"}

    @property
    def api_url(self) -> str:
        return f"{'https' if self.api_tls else 'http'}://{self.host}:{self.api_port}"

    def replica_api_url(self, replica: int) -> str:
        """The API of master replica ``replica`` (1: the first, ``api_url``)."""
        port = self.api_port if replica == 1 else self.replica_api_ports[replica]
        return f"{'https' if self.api_tls else 'http'}://{self.host}:{port}"

    @property
    def api_urls(self) -> list[str]:
        """Every master replica's API (any of them serves it)."""
        return [self.replica_api_url(r) for r in (1, *sorted(self.replica_api_ports))]

    @property
    def api_verify(self) -> ssl.SSLContext | bool:
        """What an HTTP client verifies the API's certificate with (httpx's ``verify``)."""
        b = self.brokers.bundle
        return client_tls(b.ca_file) if b is not None else True

    @property
    def logs(self) -> Path:
        return self.workdir / "logs"

    def env(self) -> dict[str, str]:
        tls: dict[str, str] = {}
        if self.api_tls and self.brokers.bundle is not None:
            b = self.brokers.bundle
            tls = {
                "ECHO_API_TLS": "true",
                "ECHO_API_CERT_FILE": str(b.server.cert),
                "ECHO_API_KEY_FILE": str(b.server.key),
            }
        return {
            **self.brokers.env(),
            **tls,
            "ECHO_NAMESPACE": self.namespace,
            "ECHO_API_PORT": str(self.api_port),
            "ECHO_API_HOST": self.host,
            "ECHO_API_URL": self.api_url,
            "ECHO_ADMIN_TOKEN_FILE": str(self.admin_token_file),
            "PYTHONUNBUFFERED": "1",
            # every agent of a local stack shares this host: each reports its own load against
            # its declared capacity, or the rebalancer would see one busy machine everywhere
            "ECHO_UTILISATION": "agent",
            **self.extra_env,
        }

    def service_env(self, name: str) -> dict[str, str]:
        env = self.env()
        if name == "master":
            env["ECHO_BOOT_ID"] = self.boot_id
        if name in LEASED:
            env["ECHO_REPLICA"] = "1"  # the first replica; restarted, it takes its lease back at once
        creds = self.brokers.credentials_file(name)
        if creds is not None:  # the path of a 0600 file, never the secret itself
            env["ECHO_CREDENTIALS_FILE"] = str(creds)
        b = self.brokers.bundle
        if name in self.metrics_ports and b is not None:
            env.update(
                ECHO_METRICS_PORT=str(self.metrics_ports[name]),
                ECHO_METRICS_HOST=self.host,
                ECHO_METRICS_CERT_FILE=str(b.server.cert),
                ECHO_METRICS_KEY_FILE=str(b.server.key),
            )
        return env

    def scraper_tls(self) -> ssl.SSLContext:
        """A client context holding the scraper's certificate: what the metrics endpoints accept."""
        b = self.brokers.bundle
        if b is None:
            raise RuntimeError("metrics are served over mutual TLS: it needs a secured stack")
        ctx = ssl.create_default_context(cafile=str(b.ca_file))
        ctx.load_cert_chain(str(b.scraper.cert), str(b.scraper.key))
        return ctx

    @property
    def metrics_targets(self) -> dict[str, str]:
        """service -> ``host:port`` of its metrics endpoint."""
        return {name: f"{self.host}:{port}" for name, port in self.metrics_ports.items()}

    def start_prometheus(self, interval: float = SCRAPE_INTERVAL) -> Prometheus:
        """Prometheus scraping every service of the stack (stopped by ``stop()``)."""
        if self.brokers.bundle is None or not self.metrics_ports:
            raise RuntimeError("Prometheus scrapes over mutual TLS: it needs a secured stack")
        self.prometheus = start_prometheus(
            self.workdir / "prometheus",
            self.brokers.bundle,
            self.metrics_targets,
            host=self.host,
            interval=interval,
            logs=self.logs,
        )
        return self.prometheus

    def agent_env(self) -> dict[str, str]:
        """What an agent sees: the brokers and the API, no service's secrets."""
        env = self.env()
        env.pop("ECHO_ADMIN_TOKEN_FILE", None)
        return env

    def start_service(self, name: str) -> ManagedProcess:
        proc = ManagedProcess(
            name, [sys.executable, "-m", f"echo_{name}"], log_dir=self.logs, env=self.service_env(name)
        )
        self.services[name] = proc
        return proc

    def start_replica(self, name: str, replica: int) -> ManagedProcess:  # name: one of REPLICATED
        """Another replica of service ``name`` (process ``{name}-{replica}``): the same identity
        and brokers; no metrics endpoint of its own (the first replica's port is taken). A
        master replica serves the API on a port of its own, kept across its restarts; returns
        once it holds that port itself (one another process bound in between is exchanged for
        another, as the first master's are: ``replica_api_url`` names the one it holds)."""
        self._spawn_replica(name, replica)
        proc_name = f"{name}-{replica}"
        self._own_ports(proc_name, REPLICA_START_TIMEOUT)
        return self.services[proc_name]

    def _spawn_replica(self, name: str, replica: int) -> ManagedProcess:
        env = self.service_env(name)
        for k in (
            "ECHO_METRICS_PORT",
            "ECHO_METRICS_HOST",
            "ECHO_METRICS_CERT_FILE",
            "ECHO_METRICS_KEY_FILE",
        ):
            env.pop(k, None)
        env["ECHO_REPLICA"] = str(replica)  # its own broker sessions and lease name
        if name == "master":  # its own API port, kept across its restarts
            port = self.replica_api_ports.get(replica) or self.new_port()
            self.replica_api_ports[replica] = port
            env["ECHO_API_PORT"] = str(port)
        proc = ManagedProcess(
            f"{name}-{replica}", [sys.executable, "-m", f"echo_{name}"], log_dir=self.logs, env=env
        )
        self.services[f"{name}-{replica}"] = proc
        return proc

    def state_dir(self, device: str) -> Path:
        return self.workdir / "agents" / device / "state"

    def enrolment_token(self, spec: AgentSpec) -> str | None:
        """A one-time token for a device not enrolled yet (None: its state dir has credentials)."""
        if (self.state_dir(spec.device_id) / "credentials.json").exists() or not self.brokers.secure:
            return None
        r = httpx.post(
            f"{self.api_url}/api/v1/enrolments",
            json={"device": spec.device_id, "tier": spec.tier, "ttl": "10m"},
            headers=self.http_headers(),
            timeout=10,
            verify=self.api_verify,
        )
        if r.status_code != 201:
            raise RuntimeError(f"enrolment of {spec.device_id} refused: HTTP {r.status_code} {r.text}")
        return str(r.json()["token"])

    def agent_argv(self, spec: AgentSpec) -> list[str]:
        """``echo-agent`` arguments: the spec, its data and state dirs, and an enrolment token
        when the device has no identity yet (the same path as a real device's first start)."""
        data = self.workdir / "agents" / spec.device_id
        argv = [*spec.argv(), "--data-dir", str(data)]
        if self.brokers.secure:
            argv += ["--state-dir", str(self.state_dir(spec.device_id))]
            token = self.enrolment_token(spec)
            if token:
                argv += ["--enrol-token", token]
        return argv

    def start_agent(self, spec: AgentSpec) -> ManagedProcess:
        env = self.agent_env()
        if not spec.reaches_nats:
            env["ECHO_NATS_URL"] = ""  # an edge device dials out to MQTT only
        proc = ManagedProcess(
            f"agent-{spec.device_id}",
            [sys.executable, "-m", "echo_agent", *self.agent_argv(spec)],
            log_dir=self.logs,
            env=env,
        )
        self.agents[spec.device_id] = proc
        return proc

    def start(
        self, fleet: tuple[AgentSpec, ...] | list[AgentSpec] = DEFAULT_FLEET, timeout: float = 60.0
    ) -> None:
        for name in SERVICES:
            self.start_service(name)
        for name in SERVICES:
            self._own_ports(name, timeout)
        # agents enrol through the API (one-time tokens), so they start once it answers
        self.wait_api(timeout)
        for spec in fleet:
            self.start_agent(spec)
        self.wait_devices({s.device_id for s in fleet}, timeout=timeout)

    def ports(self, name: str) -> list[int]:
        """The ports process ``name`` listens on: the master's API, each service's metrics; a
        master replica's (``master-2``, ...) API (the other replicas listen on none)."""
        replica = replica_of(name)
        if replica is not None:
            base, n = replica
            return [self.replica_api_ports[n]] if base == "master" else []
        out = [self.api_port] if name == "master" else []
        if name in self.metrics_ports:
            out.append(self.metrics_ports[name])
        return out

    def _own_ports(self, name: str, timeout: float) -> None:
        """Until process ``name`` (a service or a replica) holds its ports itself. A port it
        finds taken (another process bound it after it was chosen, or while a replica was down)
        is exchanged for another and the process started again, up to ``START_ATTEMPTS``
        times; an API port that was asked for is not."""
        for attempt in range(START_ATTEMPTS):
            try:
                wait_for_own_ports(self.host, self.ports(name), self.services[name], timeout=timeout)
                return
            except PortTaken as e:
                is_api = name == "master" and e.port == self.api_port
                if (is_api and self.api_port_fixed) or attempt == START_ATTEMPTS - 1:
                    raise
                self.services[name].stop(timeout=3)
                replica = replica_of(name)
                if replica is not None:  # a master replica: its one port is its API's
                    base, n = replica
                    self.replica_api_ports[n] = self.new_port()
                    self._spawn_replica(base, n)
                    continue
                if is_api:
                    self.api_port = self.new_port()
                else:
                    self.metrics_ports[name] = self.new_port()
                self.start_service(name)

    def wait_api(self, timeout: float = 60.0, verify: ssl.SSLContext | bool | None = None) -> None:
        """Until this stack's master answers ``/healthz`` (its boot id); another process on
        the port is an error at once, not a stack that seems up. ``verify``: what to check the
        API's certificate with, when it is not of the brokers' CA."""
        deadline = time.monotonic() + timeout
        master = self.services["master"]
        wait_for_port(self.host, self.api_port, timeout=timeout, proc=master)
        last = "no answer"
        while time.monotonic() < deadline:
            try:
                r = httpx.get(
                    f"{self.api_url}/healthz", timeout=2, verify=self.api_verify if verify is None else verify
                )
                json_body = r.headers.get("content-type", "").startswith("application/json")
                boot = r.json().get("boot_id") if json_body else None
            except (httpx.HTTPError, ValueError, AttributeError) as e:
                last = f"{type(e).__name__}: {e}"
            else:
                if boot == self.boot_id:
                    return
                if boot is not None or r.status_code == 404:
                    raise RuntimeError(
                        f"{self.api_url} answers, but not as this stack's master (boot id {boot}): "
                        "another ECHO or another server holds the port"
                    )
            if not master.alive():
                raise RuntimeError(f"master exited with {master.returncode}: {master.log_tail()}")
            time.sleep(0.05)
        raise TimeoutError(
            f"this stack's master did not answer {self.api_url}/healthz within {timeout}s ({last})"
        )

    def wait_devices(self, ids: set[str], status: str = "online", timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        seen: dict[str, str] = {}
        while time.monotonic() < deadline:
            with contextlib.suppress(httpx.HTTPError, ValueError):
                r = httpx.get(
                    f"{self.api_url}/api/v1/devices",
                    timeout=2,
                    headers=self.http_headers(),
                    verify=self.api_verify,
                )
                if r.status_code == 200:
                    seen = {d["id"]: d["status"] for d in r.json()}
                    if all(seen.get(i) == status for i in ids):
                        return
            for name, p in {**self.services, **self.agents}.items():
                if not p.alive():
                    raise RuntimeError(f"{name} exited with {p.returncode}: {p.log_tail()}")
            time.sleep(0.05)
        raise TimeoutError(f"devices {sorted(ids)} not all {status} after {timeout}s: {seen}")

    def stop(self, timeout: float = 10.0) -> dict[str, int | None]:
        """SIGTERM the agents, then the services (master first). Returns exit codes."""
        codes: dict[str, int | None] = {}
        for p in self.agents.values():
            p.signal(15)  # all at once; stop() below waits (its own SIGTERM is ignored while stopping)
        for name, p in self.agents.items():
            codes[f"agent-{name}"] = p.stop(timeout)
        for name in reversed(SERVICES):
            if name in self.services:
                codes[name] = self.services[name].stop(timeout)
        if self.prometheus is not None:
            codes["prometheus"] = self.prometheus.stop(timeout)
        return codes

    def __enter__(self) -> Platform:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
