"""Role changes reach Mosquitto's dynamic security in chunks: its plugin rewrites its whole
configuration after every command, so one message of 1,000 changes froze the broker for
tens of seconds (bench/fleet.py); chunks let it serve its clients in between."""

from __future__ import annotations

from typing import Any

from echo_master.access_control import DYNSEC_CHUNK, DeviceAccess
from echo_shared.names import Names


class Grants:
    async def grants_of_many(self, devices: list[str]) -> dict[str, dict[str, Any]]:
        return {d: {} for d in devices}


class Dynsec:
    def __init__(self, refuse: set[str] = frozenset()) -> None:  # type: ignore[assignment]
        self.messages: list[list[dict[str, Any]]] = []
        self.refuse = refuse

    async def call(self, commands: list[dict[str, Any]], *, tolerate: frozenset[str] = frozenset()) -> Any:
        self.messages.append(commands)
        return [
            {"command": c["command"], "correlationData": f"b:{i}"}
            | ({"error": "Role not found"} if c["rolename"].rsplit(".", 1)[-1] in self.refuse else {})
            for i, c in enumerate(commands)
        ]


def access(dynsec: Dynsec) -> DeviceAccess:
    return DeviceAccess(
        Grants(),  # type: ignore[arg-type]
        Names("t"),
        None,  # type: ignore[arg-type]
        dynsec=dynsec,  # type: ignore[arg-type]
        mqtt_url="mqtts://127.0.0.1:1",
        nats_url=None,
        ca_file=None,
        rotation_grace=1.0,
    )


async def test_a_wave_of_role_changes_goes_in_chunks_each_once() -> None:
    dynsec = Dynsec()
    acc = access(dynsec)
    devices = [f"d{i:04d}" for i in range(2 * DYNSEC_CHUNK + 3)]
    await acc.push_many(devices)
    assert [len(m) for m in dynsec.messages] == [DYNSEC_CHUNK, DYNSEC_CHUNK, 3]
    roles = [c["rolename"] for m in dynsec.messages for c in m]
    assert roles == [Names("t").device_role(d) for d in devices]
    await acc.push_many(devices)  # nothing changed: nothing sent again
    assert len(dynsec.messages) == 3


async def test_a_refused_role_change_is_sent_again_next_time() -> None:
    dynsec = Dynsec(refuse={"d0001"})
    acc = access(dynsec)
    await acc.push_many(["d0000", "d0001", "d0002"])
    dynsec.refuse = set()
    await acc.push_many(["d0000", "d0001", "d0002"])
    assert [c["rolename"] for c in dynsec.messages[1]] == [Names("t").device_role("d0001")]
