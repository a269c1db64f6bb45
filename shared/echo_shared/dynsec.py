"""Mosquitto's dynamic-security plugin, driven by the master over its own MQTT session.

The plugin takes JSON commands on ``$CONTROL/dynamic-security/v1`` and answers on
``.../v1/response`` to the client that asked. ``DynsecAdmin.call`` sends a batch of
commands and returns their responses (``DynsecError`` naming the first failure).

Devices: each device has one role (``Names.device_role``) and one client per credential
generation (``Names.device_username``), pinned to nothing but its password. The role's
ACL list is replaced as a whole (``modifyRole``), which — unlike ``addRoleACL`` /
``removeRoleACL`` in Mosquitto 2.0 — does not disconnect the device; deliveries are
checked against the role at every message (``publishClientReceive``), so a withdrawn
grant stops the flow at once. Deleting a client disconnects it.

``device_rights`` is the ACL of one device: its own control topics (hello, hb, bye,
ack, status, ckpt, probe: publish; cmd: subscribe) plus, per channel of its tasks, what
the producing or the consuming end needs (``ChannelGrant``).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from .brokerauth import MqttRights, mqtt_acls
from .errors import BrokerUnavailable, EchoError
from .mqtt import MqttClient, MqttMessage
from .names import Names

CONTROL_TOPIC = "$CONTROL/dynamic-security/v1"
RESPONSE_TOPIC = "$CONTROL/dynamic-security/v1/response"


class DynsecError(EchoError):
    def __init__(self, command: str, error: str) -> None:
        super().__init__(f"dynamic security {command}: {error}")
        self.command = command
        self.error = error


@dataclass(frozen=True, order=True)
class ChannelGrant:
    """One end of one channel: ``produce`` (publish records, read progress/resend) or
    ``consume`` (read records, publish progress/resend). ``app``: a topic of an operator's own
    (``io.mqtt_sink`` publishes it, ``io.mqtt_source`` subscribes to it), nothing more:
    ``"mqtt"`` or ``"nats"`` (an operator's topic says nothing of its broker by itself)."""

    topic: str
    produce: bool
    app: str = ""

    def on_nats(self, names: Names) -> bool:
        return self.app == "nats" if self.app else names.is_subject(self.topic)


def device_rights(names: Names, device: str, grants: Iterable[ChannelGrant] = ()) -> MqttRights:
    own = [
        names.hello_topic(device),
        names.heartbeat_topic(device),
        names.bye_topic(device),
        names.ack_topic(device),
        names.status_topic(device),
        names.checkpoint_topic(device),
        names.probe_topic(device),
    ]
    publish: list[str] = list(own)
    subscribe: list[str] = [names.command_topic(device)]
    for g in sorted(set(grants)):
        if g.app:
            (publish if g.produce else subscribe).append(g.topic)
            continue
        control = [names.progress_topic(g.topic), names.resend_topic(g.topic)]
        if g.produce:
            publish.append(g.topic)
            subscribe.extend(control)
        else:
            subscribe.append(g.topic)
            publish.extend(control)
    return MqttRights(publish=tuple(dict.fromkeys(publish)), subscribe=tuple(dict.fromkeys(subscribe)))


def role_acls(rights: MqttRights) -> list[dict[str, Any]]:
    """Literal subscriptions for a device (it may subscribe to exactly these filters)."""
    acls = mqtt_acls(rights)
    for a in acls:
        if a["acltype"] == "subscribePattern":
            a["acltype"] = "subscribeLiteral"
    return acls


class DynsecAdmin:
    """Sends dynamic-security commands over an MQTT client whose identity may administer it.

    The owner routes messages on ``RESPONSE_TOPIC`` to ``on_response``.
    """

    def __init__(self, mqtt: MqttClient, *, timeout: float = 5.0) -> None:
        self.mqtt = mqtt
        self.timeout = timeout
        self._waiters: dict[str, asyncio.Future[list[dict[str, Any]]]] = {}
        self._lock = asyncio.Lock()

    async def start(self) -> None:
        await self.mqtt.subscribe(RESPONSE_TOPIC, qos=1)

    def on_response(self, msg: MqttMessage) -> None:
        try:
            doc = json.loads(msg.payload)
            responses = doc["responses"]
        except (ValueError, KeyError, TypeError):
            return
        by_batch: dict[str, list[dict[str, Any]]] = {}
        for r in responses:
            corr = str(r.get("correlationData", ""))
            batch, _, _ = corr.partition(":")
            by_batch.setdefault(batch, []).append(r)
        for batch, rs in by_batch.items():
            fut = self._waiters.get(batch)
            if fut is not None and not fut.done():
                fut.set_result(rs)

    async def call(
        self, commands: list[dict[str, Any]], *, tolerate: frozenset[str] = frozenset()
    ) -> list[dict[str, Any]]:
        """Run ``commands`` (in order, one message); errors listed in ``tolerate`` are not raised."""
        if not commands:
            return []
        batch = uuid.uuid4().hex[:12]
        cmds = [c | {"correlationData": f"{batch}:{i}"} for i, c in enumerate(commands)]
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[list[dict[str, Any]]] = loop.create_future()
        self._waiters[batch] = fut
        try:
            await self.mqtt.publish(CONTROL_TOPIC, json.dumps({"commands": cmds}).encode(), qos=1)
            try:
                async with asyncio.timeout(self.timeout):
                    responses = await fut
            except TimeoutError as e:
                raise BrokerUnavailable(
                    f"the MQTT broker's dynamic security did not answer within {self.timeout}s"
                ) from e
        finally:
            self._waiters.pop(batch, None)
        for r in responses:
            err = r.get("error")
            if err and err not in tolerate:
                raise DynsecError(str(r.get("command")), str(err))
        return responses

    # ---------------------------------------------------------------- commands

    @staticmethod
    def create_role(role: str, rights: MqttRights) -> dict[str, Any]:
        return {"command": "createRole", "rolename": role, "acls": role_acls(rights)}

    @staticmethod
    def set_role(role: str, rights: MqttRights) -> dict[str, Any]:
        return {"command": "modifyRole", "rolename": role, "acls": role_acls(rights)}

    @staticmethod
    def create_client(username: str, password: str, role: str) -> dict[str, Any]:
        # the plugin stores only a PBKDF2 hash of the password
        return {
            "command": "createClient",
            "username": username,
            "password": password,
            "roles": [{"rolename": role}],
        }

    @staticmethod
    def delete_client(username: str) -> dict[str, Any]:
        return {"command": "deleteClient", "username": username}

    @staticmethod
    def delete_role(role: str) -> dict[str, Any]:
        return {"command": "deleteRole", "rolename": role}

    async def close(self) -> None:
        for fut in self._waiters.values():
            if not fut.done():
                fut.cancel()
        with contextlib.suppress(Exception):
            await self.mqtt.unsubscribe([RESPONSE_TOPIC])
