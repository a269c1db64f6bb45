"""Start and stop an emulated fleet: network, delay proxy, services and agents.

``Testbed(brokers, workdir, fleet).start()``:

1. removes what testbeds killed with -9 left behind (``network.sweep_stale``);
2. creates the bridge and, per isolated device (one with a latency or a bandwidth), a
   network namespace with its veth pair and tbf (``network.Network``);
3. starts one delay-proxy process (``delay_proxy.py``) with one route per (isolated
   device, broker it reaches): it listens on the bridge address and forwards to the
   broker on 127.0.0.1 with the device's one-way latency added in each direction;
4. starts the services and the agents like ``echoctl dev up`` does (``devstack``), each
   isolated agent with ``ip netns exec <its namespace>`` and broker URLs naming its
   proxy routes, and waits until every device is online.

``stop()`` ends the agents, the services, the proxy, then removes every namespace, veth,
qdisc and the bridge; it is idempotent and also runs when ``start()`` fails half way.
The brokers are the caller's (``start_brokers`` on 127.0.0.1, their default): loopback is
what keeps the namespaces from reaching them except through the proxy.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

from ..devstack import Brokers, ManagedProcess, free_port, wait_for_port
from ..devstack.platform import AgentSpec, Platform
from .delay_proxy import Route
from .fleet import DEFAULT_TESTBED, TestbedDevice
from .network import (
    TESTBED_HOST,
    DeviceLink,
    Network,
    NetworkError,
    ip_binary,
    sweep_stale,
    unavailable_reason,
)


class TestbedError(RuntimeError):
    """The testbed cannot run here, or a step of its start-up failed."""

    __test__ = False


def _host_port(url: str) -> tuple[str, int]:
    parts = urlsplit(url)
    if not parts.hostname or not parts.port:
        raise TestbedError(f"broker URL {url!r} has no host:port")
    return parts.hostname, parts.port


@dataclass(frozen=True)
class AgentLaunch:
    """How one agent is started: its namespace (None = root), its broker URLs and the API's."""

    netns: str | None
    mqtt_url: str
    nats_url: str | None
    api_url: str | None = None


@dataclass
class TestbedPlatform(Platform):
    """``Platform`` whose agents start in their namespace, with their own broker URLs."""

    __test__ = False

    launches: dict[str, AgentLaunch] = field(default_factory=dict)

    def start_agent(self, spec: AgentSpec) -> ManagedProcess:
        launch = self.launches.get(spec.device_id)
        if launch is None:
            return super().start_agent(spec)
        env = {**self.agent_env(), "ECHO_MQTT_URL": launch.mqtt_url}
        if launch.api_url:  # it enrols through the proxy too
            env["ECHO_API_URL"] = launch.api_url
        prefix = [ip_binary(), "netns", "exec", launch.netns] if launch.netns else []
        unset: list[str] = []
        if launch.nats_url:
            env["ECHO_NATS_URL"] = launch.nats_url
        else:  # `env -u` execs too, so the pid stays the agent's (signals, PDEATHSIG)
            unset = ["env", "-u", "ECHO_NATS_URL"]
        proc = ManagedProcess(
            f"agent-{spec.device_id}",
            [*prefix, *unset, sys.executable, "-m", "echo_agent", *self.agent_argv(spec)],
            log_dir=self.logs,
            env=env,
        )
        self.agents[spec.device_id] = proc
        return proc


@dataclass(frozen=True)
class DevicePath:
    """Where a device of a running testbed runs and how it reaches each broker."""

    device: str
    tier: str
    site: str
    netns: str | None  # None: the root namespace, next to the brokers
    address: str
    latency_ms: float
    mbps: float | None
    shaped: bool  # tbf applied
    brokers: dict[str, str]  # broker -> proxy route "host:port", or "direct"

    def path(self) -> str:
        if self.netns is None:
            return "next to the brokers"
        out = f"+{self.latency_ms:g} ms each way"
        if self.mbps is not None:
            out += f", {self.mbps:g} Mbit/s" + ("" if self.shaped else " (not shaped)")
        return out


@dataclass
class Testbed:
    brokers: Brokers
    workdir: Path
    fleet: Sequence[TestbedDevice] = DEFAULT_TESTBED
    namespace: str = "echo"
    api_port: int = 0
    extra_env: dict[str, str] = field(default_factory=dict)
    network: Network | None = None
    proxy: ManagedProcess | None = None
    platform: TestbedPlatform | None = None
    routes: dict[str, dict[str, Route]] = field(default_factory=dict)  # device -> broker -> route
    cleanup_problems: list[str] = field(default_factory=list)  # what stop() could not remove

    __test__ = False

    def __post_init__(self) -> None:
        ids = [d.device_id for d in self.fleet]
        if len(set(ids)) != len(ids):
            raise TestbedError(f"device ids must be unique: {ids}")

    @property
    def logs(self) -> Path:
        return self.workdir / "logs"

    @property
    def isolated(self) -> list[TestbedDevice]:
        return [d for d in self.fleet if d.isolated]

    def netns_of(self, device_id: str) -> str | None:
        if self.network is None or device_id not in self.network.attached:
            return None
        return self.network.attached[device_id].netns

    # ------------------------------------------------------------------ start

    def start(self, timeout: float = 90.0) -> None:
        """Network, proxy, services, agents; returns when every device is online."""
        try:
            if self.isolated:
                reason = unavailable_reason()
                if reason:
                    raise TestbedError(reason)
                sweep_stale()
                self.network = Network([DeviceLink(d.device_id, d.mbps) for d in self.isolated])
                try:
                    self.network.up()
                except NetworkError as e:
                    raise TestbedError(f"network set-up failed: {e}") from e
                self._start_proxy()
            self.platform = TestbedPlatform(
                self.brokers,
                self.workdir,
                namespace=self.namespace,
                api_port=self.api_port,
                extra_env=dict(self.extra_env),
                launches=self._launches(),
            )
            self.platform.start(tuple(self.fleet), timeout=timeout)
        except BaseException:
            self.stop()
            raise

    def _start_proxy(self) -> None:
        assert self.network is not None
        host = self.network.host_address
        if not self.api_port:
            self.api_port = free_port()
        upstreams = {
            "mqtt": _host_port(self.brokers.mqtt_url),
            "nats": _host_port(self.brokers.nats_url),
            "api": ("127.0.0.1", self.api_port),
        }
        for d in self.isolated:
            per: dict[str, Route] = {}
            for broker in ("mqtt", "nats", "api"):
                if broker == "nats" and not d.reaches_nats:
                    continue
                uh, up = upstreams[broker]
                per[broker] = Route(host, free_port(host), uh, up, d.latency_ms, f"{d.device_id}-{broker}")
            self.routes[d.device_id] = per
        argv = [sys.executable, "-m", "echo_cli.testbed.delay_proxy"]
        for per in self.routes.values():
            for r in per.values():
                argv += ["--route", r.spec()]
        self.proxy = ManagedProcess("delay-proxy", argv, log_dir=self.logs)
        for per in self.routes.values():
            for r in per.values():
                wait_for_port(r.listen_host, r.listen_port, proc=self.proxy)

    def _launches(self) -> dict[str, AgentLaunch]:
        out: dict[str, AgentLaunch] = {}
        for d in self.fleet:
            if d.isolated:
                per = self.routes[d.device_id]
                mqtt, nats, api = per["mqtt"], per.get("nats"), per["api"]
                mqtt_scheme, nats_scheme = (
                    urlsplit(self.brokers.mqtt_url).scheme,
                    urlsplit(self.brokers.nats_url).scheme,
                )
                # by name: the brokers' certificate is valid for TESTBED_HOST, not the bridge address
                out[d.device_id] = AgentLaunch(
                    self.netns_of(d.device_id),
                    f"{mqtt_scheme}://{TESTBED_HOST}:{mqtt.listen_port}",
                    f"{nats_scheme}://{TESTBED_HOST}:{nats.listen_port}" if nats else None,
                    f"{'https' if self.brokers.secure else 'http'}://{TESTBED_HOST}:{api.listen_port}",
                )
            else:
                out[d.device_id] = AgentLaunch(
                    None, self.brokers.mqtt_url, self.brokers.nats_url if d.reaches_nats else None
                )
        return out

    # ------------------------------------------------------------------ stop

    def stop(self, timeout: float = 10.0) -> dict[str, int | None]:
        """Agents, services, proxy, then the network. Exit codes by process; idempotent.

        What could not be removed is in ``cleanup_problems`` (never raised: stop() runs
        while another error unwinds, and ``echoctl testbed clean`` removes leftovers)."""
        codes: dict[str, int | None] = {}
        if self.platform is not None:
            codes.update(self.platform.stop(timeout))
        if self.proxy is not None:
            codes["delay-proxy"] = self.proxy.stop(timeout)
        if self.network is not None:
            self.cleanup_problems += self.network.down()
        return codes

    def __enter__(self) -> Testbed:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ------------------------------------------------------------------ reporting

    def children(self) -> dict[str, ManagedProcess]:
        out: dict[str, ManagedProcess] = {}
        if self.proxy is not None:
            out["delay-proxy"] = self.proxy
        if self.platform is not None:
            out.update(self.platform.services)
            out.update({f"agent-{k}": v for k, v in self.platform.agents.items()})
        return out

    def describe(self) -> list[DevicePath]:
        """One row per device: where it runs and how it reaches the brokers."""
        rows: list[DevicePath] = []
        for d in self.fleet:
            att = self.network.attached.get(d.device_id) if self.network else None
            routes = self.routes.get(d.device_id, {})
            rows.append(
                DevicePath(
                    device=d.device_id,
                    tier=d.tier,
                    site=d.site,
                    netns=att.netns if att else None,
                    address=att.address if att else "127.0.0.1",
                    latency_ms=d.latency_ms,
                    mbps=d.mbps,
                    shaped=bool(att and att.shaped),
                    brokers={b: f"{r.listen_host}:{r.listen_port}" for b, r in routes.items()}
                    or {b: "direct" for b in d.brokers},
                )
            )
        return rows
