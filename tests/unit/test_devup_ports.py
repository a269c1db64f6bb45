"""``echoctl dev up`` reports the ports its servers hold, not the ones first chosen: an API
port taken between the check and the master's bind is exchanged and said, and ``.echo/dev.env``
names the final one. The brokers and the platform are stand-ins (the real ones: the
integration tests ``test_dev_ports.py``, ``test_dev_port_races.py`` and ``tests/e2e/test_demo.py``)."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import pytest
from rich.console import Console

from echo_cli import devup
from echo_cli.devstack import Brokers, free_port
from echo_cli.devstack.platform import Platform


class MovedPlatform(Platform):
    """A platform whose master found its API port taken (``_own_ports``) and got another."""

    moved_to = 0

    def start(self, fleet: Any = (), timeout: float = 60.0) -> None:
        assert not self.api_port_fixed  # dev up lets a taken port move, as a busy one does
        self.api_port = MovedPlatform.moved_to


class SamePlatform(Platform):
    def start(self, fleet: Any = (), timeout: float = 60.0) -> None:
        pass


def run_start(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, platform: type[Platform], requested: int
) -> str:
    def brokers(workdir: Path, **_: Any) -> Brokers:
        return Brokers("nats://127.0.0.1:1", "mqtt://127.0.0.1:2", "redis://127.0.0.1:3/0", workdir)

    monkeypatch.setattr(devup, "start_brokers", brokers)
    monkeypatch.setattr(devup, "Platform", platform)
    monkeypatch.setattr(devup, "prometheus_binary", lambda: None)
    out = io.StringIO()
    d = devup.DevUp(
        root=tmp_path, api_port=requested, submit=[], console=Console(file=out, width=200, color_system=None)
    )
    d._start()
    assert d.platform is not None
    env = (tmp_path / ".echo" / "dev.env").read_text()
    assert f"ECHO_API_URL=http://127.0.0.1:{d.platform.api_port}\n" in env
    return out.getvalue()


def test_an_api_port_taken_while_starting_moves_and_is_said(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    requested = free_port()
    MovedPlatform.moved_to = free_port()
    said = run_start(tmp_path, monkeypatch, MovedPlatform, requested)
    moved = MovedPlatform.moved_to
    assert f"port {requested} was taken while ECHO started; the API uses port {moved}" in said
    assert f"127.0.0.1:{MovedPlatform.moved_to}" in said  # the banner


def test_an_api_port_kept_is_not_remarked(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    requested = free_port()
    said = run_start(tmp_path, monkeypatch, SamePlatform, requested)
    assert "taken" not in said and "busy" not in said
    assert f"http://127.0.0.1:{requested}" in said


class ReplicaPlatform(SamePlatform):
    started: list[tuple[str, int]] = []

    def start_replica(self, name: str, replica: int) -> Any:
        ReplicaPlatform.started.append((name, replica))
        return None


def test_replicas_are_started_and_restarted_as_replicas(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(
        devup,
        "start_brokers",
        lambda workdir, **_: Brokers("nats://x:1", "mqtt://x:2", "redis://x:3/0", workdir),
    )
    monkeypatch.setattr(devup, "Platform", ReplicaPlatform)
    monkeypatch.setattr(devup, "prometheus_binary", lambda: None)
    out = io.StringIO()
    d = devup.DevUp(
        root=tmp_path, api_port=free_port(), submit=[], replicas=3, console=Console(file=out, width=200)
    )
    d._start()
    assert ReplicaPlatform.started == [
        ("master", 2),
        ("master", 3),
        ("migrator", 2),
        ("migrator", 3),
        ("scheduler", 2),
        ("scheduler", 3),
        ("registry", 2),
        ("registry", 3),
    ]
    assert "migrator: 3 replicas" in out.getvalue()
    assert d.platform is not None
    d.platform.services["migrator-3"] = None  # type: ignore[assignment]
    d.restart("migrator-3")  # a replica that died comes back as that replica
    assert ReplicaPlatform.started[-1] == ("migrator", 3)


class MasterReplicaPlatform(SamePlatform):
    """Master replicas that hold an API port each (as ``Platform._spawn_replica`` gives them)."""

    def start_replica(self, name: str, replica: int) -> Any:
        if name == "master":
            self.replica_api_ports[replica] = self.new_port()
        return None


def test_dev_env_lists_every_master_replica(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``ECHO_API_URL`` in ``.echo/dev.env`` names every master replica, the first first: echoctl
    and agents that source it fail over to the next when one does not connect."""
    monkeypatch.setattr(
        devup,
        "start_brokers",
        lambda workdir, **_: Brokers("nats://x:1", "mqtt://x:2", "redis://x:3/0", workdir),
    )
    monkeypatch.setattr(devup, "Platform", MasterReplicaPlatform)
    monkeypatch.setattr(devup, "prometheus_binary", lambda: None)
    d = devup.DevUp(
        root=tmp_path,
        api_port=free_port(),
        submit=[],
        replicas=3,
        console=Console(file=io.StringIO(), width=200),
    )
    d._start()
    assert d.platform is not None
    ports = [d.platform.api_port, d.platform.replica_api_ports[2], d.platform.replica_api_ports[3]]
    assert len(set(ports)) == 3
    env = (tmp_path / ".echo" / "dev.env").read_text()
    urls = ",".join(f"http://127.0.0.1:{p}" for p in ports)
    assert f"ECHO_API_URL={urls}\n" in env


def test_ha_starts_a_nats_cluster_and_replicated_jetstream(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    asked: dict[str, Any] = {}

    def brokers(workdir: Path, **kw: Any) -> Brokers:
        asked.update(kw)
        return Brokers("nats://x:1,nats://x:2,nats://x:3", "mqtt://x:2", "redis://x:3/0", workdir)

    monkeypatch.setattr(devup, "start_brokers", brokers)
    monkeypatch.setattr(devup, "Platform", SamePlatform)
    monkeypatch.setattr(devup, "prometheus_binary", lambda: None)
    out = io.StringIO()
    d = devup.DevUp(
        root=tmp_path, api_port=free_port(), submit=[], ha=True, console=Console(file=out, width=200)
    )
    d._start()
    assert asked["nats_nodes"] == 3 and asked["redis_ha"] is True
    assert d.platform is not None and d.platform.extra_env["ECHO_JETSTREAM_REPLICAS"] == "3"
    assert "a cluster of 3 nodes" in out.getvalue() and "3 sentinels" in out.getvalue()
