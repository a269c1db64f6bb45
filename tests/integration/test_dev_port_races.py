"""Each server of the dev stack whose chosen port another process binds before it does (two
stacks or test runs starting at once) ends up on another port, working, with everything that
names the port (config files, URLs, Prometheus' targets) naming the one it holds."""

from __future__ import annotations

import socket
import ssl
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import nats
import pytest
import redis

from echo_cli.devstack import Brokers, processes
from echo_cli.devstack.brokers import start_brokers
from echo_cli.devstack.monitoring import prometheus_binary, start_prometheus
from echo_cli.devstack.platform import Platform
from tests.conftest import unique_namespace
from tests.harness.waiting import wait_until

BROKERS = ("nats", "mosquitto", "redis")  # the order start_brokers starts them (and asks for ports)


def squat(port: int = 0) -> socket.socket:
    """A listener of someone else's on a port that looked free a moment before."""
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # a port just freed (``port``) too
    s.bind(("127.0.0.1", port))
    s.listen()
    return s


@pytest.fixture
def squatters() -> Iterator[list[socket.socket]]:
    held: list[socket.socket] = []
    yield held
    for s in held:
        s.close()


def port_of(url: str) -> int:
    return int(url.rsplit(":", 1)[1].split("/")[0])


@pytest.mark.parametrize("victim", BROKERS)
async def test_a_broker_whose_port_is_taken_in_between_moves_and_works(
    victim: str, squatters: list[socket.socket], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    squatters.append(squat())
    taken = squatters[0].getsockname()[1]
    real = processes.free_port
    given: list[int] = []

    def free_port(host: str = "127.0.0.1") -> int:  # the victim's first choice is taken
        given.append(taken if len(given) == BROKERS.index(victim) else real(host))
        return given[-1]

    monkeypatch.setattr(processes, "free_port", free_port)
    b = start_brokers(tmp_path / "brokers", tester=True)
    try:
        assert given.count(taken) == 1 and len(given) == len(BROKERS) + 1, given
        ports = {"nats": port_of(b.nats_url), "mosquitto": port_of(b.mqtt_url), "redis": port_of(b.redis_url)}
        assert taken not in ports.values(), ports
        for name, port in ports.items():  # each broker holds the port its URL names
            assert processes.listens(b.processes[name].pid, port), name
        assert not processes.listens(b.processes[victim].pid, taken)
        if victim == "mosquitto":  # its config was written again for the new port
            assert f"listener {ports['mosquitto']} " in (tmp_path / "brokers" / "mosquitto.conf").read_text()
        if victim == "nats":
            assert f"127.0.0.1:{ports['nats']}" in (tmp_path / "brokers" / "nats.conf").read_text()
        # our credentials are accepted on every port: these are our brokers, not someone else's
        await works(b)
    finally:
        b.stop()


async def works(b: Brokers) -> None:
    access = b.access()
    r = redis.Redis.from_url(b.redis_url, **access.redis_options())
    try:
        assert r.ping()
    finally:
        r.close()
    nc = await nats.connect(b.nats_url, allow_reconnect=False, connect_timeout=5, **access.nats_options())
    try:
        await nc.publish("ports.check", b"x")
        await nc.flush(timeout=5)
    finally:
        await nc.close()
    async with b.mqtt_client("ports-" + uuid.uuid4().hex[:6]) as mqtt:
        await mqtt.subscribe("ports/check", timeout=5)


def test_a_services_metrics_port_taken_in_between_moves_and_the_api_stays(
    brokers: Brokers, squatters: list[socket.socket], tmp_path: Path
) -> None:
    """The master has two ports (API, metrics): the one it found taken is the one replaced."""
    assert brokers.bundle is not None  # metrics are served over mutual TLS: a secured stack
    platform = Platform(brokers, tmp_path / "platform", namespace=unique_namespace())
    api_port = platform.api_port
    squatters.extend((squat(), squat()))
    taken = {"master": squatters[0].getsockname()[1], "registry": squatters[1].getsockname()[1]}
    platform.metrics_ports.update(taken)  # chosen free, then bound by someone else
    try:
        platform.start(())
        assert platform.api_port == api_port
        for name, port in taken.items():
            assert platform.metrics_ports[name] != port, name
        for name, proc in platform.services.items():
            for port in platform.ports(name):
                assert processes.listens(proc.pid, port), (name, port)
        b = brokers.bundle
        ctx = ssl.create_default_context(cafile=str(b.ca_file))
        ctx.load_cert_chain(str(b.scraper.cert), str(b.scraper.key))
        for name in taken:  # Prometheus would be given these targets
            r = httpx.get(f"https://{platform.metrics_targets[name]}/metrics", verify=ctx, timeout=10)
            assert r.status_code == 200, (name, r.status_code)
            assert "# TYPE" in r.text, name
    finally:
        platform.stop()


def test_prometheus_whose_port_is_taken_in_between_moves_and_answers(
    brokers: Brokers, squatters: list[socket.socket], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert prometheus_binary() is not None, "Prometheus is not installed: make deps installs it"
    assert brokers.bundle is not None
    squatters.append(squat())
    taken = squatters[0].getsockname()[1]
    real = processes.free_port
    given: list[int] = []

    def free_port(host: str = "127.0.0.1") -> int:
        given.append(taken if not given else real(host))
        return given[-1]

    monkeypatch.setattr(processes, "free_port", free_port)
    prometheus = start_prometheus(tmp_path / "prometheus", brokers.bundle, {}, interval=1.0)
    try:
        assert given[0] == taken and len(given) == 2
        assert prometheus.url == f"https://127.0.0.1:{given[1]}"
        assert processes.listens(prometheus.process.pid, given[1])
        assert "address already in use" in prometheus.process.log_tail().lower()  # the first one's
        assert prometheus.query("up") == []  # our login is accepted: it is ours
    finally:
        prometheus.stop()


@pytest.mark.parametrize("when", ["chosen", "restarted"])
def test_a_master_replicas_api_port_taken_in_between_moves_and_is_reported(
    when: str,
    brokers: Brokers,
    squatters: list[socket.socket],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Master replica 2's API port is bound by another process after it was chosen for it
    (``chosen``), or while the replica was down and ``echoctl dev up`` restarts it on the port
    it keeps (``restarted``): it ends up serving the API on another port, the one
    ``replica_api_url(2)`` and ``api_urls`` report (not restarted on the taken one forever)."""
    platform = Platform(brokers, tmp_path / "platform", namespace=unique_namespace())
    try:
        platform.start(())
        if when == "chosen":
            squatters.append(squat())
            taken = squatters[0].getsockname()[1]
            real = platform.new_port
            given: list[int] = []

            def new_port() -> int:  # the replica's first port: free when chosen, then taken
                given.append(taken if not given else real())
                return given[-1]

            monkeypatch.setattr(platform, "new_port", new_port)
        else:
            first = platform.start_replica("master", 2)
            taken = platform.replica_api_ports[2]
            wait_until(lambda: processes.listens(first.pid, taken), timeout=30, what="replica 2 on its port")
            first.kill()  # it died; another process binds its port before it is restarted
            squatters.append(squat(taken))
        replica = platform.start_replica("master", 2)
        url = platform.replica_api_url(2)
        port = port_of(url)
        assert port != taken and platform.api_urls == [platform.api_url, url]
        if when == "chosen":
            assert given[0] == taken and len(given) == 2, given
        assert replica is platform.services["master-2"] and replica.alive()
        assert processes.listens(replica.pid, port)
        assert not processes.listens(replica.pid, taken)
        assert "address already in use" in replica.log_tail(64_000).lower()  # the run on the taken port

        def health() -> dict[str, object] | None:
            try:
                r = httpx.get(f"{url}/healthz", verify=platform.api_verify, timeout=5)
            except httpx.HTTPError:
                return None
            return r.json() if r.status_code == 200 else None

        body = wait_until(health, timeout=30, what="the replica's /healthz")
        assert body["boot_id"] == platform.boot_id  # this stack's master replica, not the squatter
        assert body["leader"] is False  # the first master leads
    finally:
        if "master-2" in platform.services:  # stop() stops the services' first replicas
            platform.services["master-2"].stop()
        platform.stop()
