"""The master's ``LoginAhead``: a device is told which deploys of a wave a NATS login may
carry only once their grants are stored, and before the broker's roles are pushed and the
commands sent (``DeviceAccess.prepare``, ``AgentLink.prepare``); the agent routes it to
its NATS logins."""

from __future__ import annotations

import uuid
from typing import Any

from echo_master.access_control import DeviceAccess
from echo_master.agents_link import AgentLink
from echo_shared.messages import Binding, DeployTask, LoginAhead
from echo_shared.names import Names

NAMES = Names("t")


def deploy(task: str, *, nats: bool) -> DeployTask:
    topic = NAMES.data_subject("df-1", "src", task) if nats else NAMES.data_topic("df-1", "src", task)
    return DeployTask(
        cmd_id=uuid.uuid4().hex,
        dataflow="df-1",
        task=task,
        generation=1,
        operator="core.passthrough",
        inputs=[Binding(peer="src", topic=topic)],
    )


class Store:
    def __init__(self, events: list[str]) -> None:
        self.events = events
        self.granted: list[tuple[str, str, Any]] = []

    async def statuses(self, devices: list[str]) -> dict[str, str | None]:
        return {d: "enrolled" for d in devices}

    async def set_grants(self, grants: list[tuple[str, str, Any]]) -> None:
        self.granted += grants
        self.events.append("grants stored")

    async def grants_of_many(self, devices: list[str]) -> dict[str, dict[str, Any]]:
        return {d: {} for d in devices}


class Dynsec:
    def __init__(self, events: list[str]) -> None:
        self.events = events

    async def call(self, commands: list[dict[str, Any]], *, tolerate: frozenset[str] = frozenset()) -> Any:
        self.events.append("roles pushed")
        return [{"command": c["command"]} for c in commands]


async def test_devices_with_nats_channels_are_told_after_the_grants_and_before_the_roles() -> None:
    events: list[str] = []
    acc = DeviceAccess(
        Store(events),  # type: ignore[arg-type]
        NAMES,
        None,  # type: ignore[arg-type]
        dynsec=Dynsec(events),  # type: ignore[arg-type]
        mqtt_url="mqtts://127.0.0.1:1",
        nats_url="tls://127.0.0.1:2",
        ca_file=None,
        rotation_grace=1.0,
    )
    told: list[list[str]] = []

    def granted(devices: list[str]) -> None:
        events.append("told")
        told.append(devices)

    wave = [
        ("fog-1", deploy("a", nats=True)),
        ("edge-1", deploy("b", nats=False)),
        ("fog-2", deploy("c", nats=True)),
    ]
    await acc.prepare(wave, granted)
    assert events == ["grants stored", "told", "roles pushed"]
    assert told == [["fog-1", "fog-2"]]  # edge-1's channels are all MQTT


class Mqtt:
    def __init__(self) -> None:
        self.sent: list[tuple[str, bytes]] = []

    def publish(self, topic: str, payload: bytes, **_: Any) -> None:
        self.sent.append((topic, payload))


class Hooks:
    def __init__(self, devices: list[str]) -> None:
        self.devices = devices

    async def prepare(self, wave: list[tuple[str, DeployTask]], granted: Any = None) -> None:
        granted(self.devices)


def link(leading: bool) -> tuple[AgentLink, Mqtt]:
    async def on_update(_: object) -> None:
        pass

    al = AgentLink("mqtts://127.0.0.1:1", NAMES, on_update)
    mqtt = Mqtt()
    al.mqtt = mqtt  # type: ignore[assignment]
    al.hooks = Hooks(["fog-1"])  # type: ignore[assignment]
    al.leading = lambda: leading
    return al, mqtt


async def test_each_device_told_is_sent_the_ids_of_its_own_deploys_of_the_wave() -> None:
    al, mqtt = link(leading=True)
    a, b, c = deploy("a", nats=True), deploy("b", nats=True), deploy("c", nats=True)
    await al.prepare([("fog-1", a), ("fog-2", b), ("fog-1", c)])
    [(topic, payload)] = mqtt.sent
    assert topic == NAMES.command_topic("fog-1")
    notice = LoginAhead.from_bytes(payload)
    assert notice.commands == [a.cmd_id, c.cmd_id]


async def test_a_replica_that_does_not_lead_tells_nobody() -> None:
    al, mqtt = link(leading=False)
    await al.prepare([("fog-1", deploy("a", nats=True))])
    assert mqtt.sent == []
