"""A task's data-plane clients, chosen per channel: MQTT topics (``/``) or NATS subjects (``.``).

``channels``, ``consuming`` and ``files`` talk to a ``Transport``: one MQTT client, one
NATS client, or ``Transports``, which holds both and routes each publish by its channel's
name and each ack to the client that delivered the message.
"""

from __future__ import annotations

import asyncio
from typing import Protocol

from echo_shared.mqtt import MqttClient, MqttMessage
from echo_shared.names import Names

from .datasession import TaskChannels
from .natschannels import NatsChannels

MqttChannels = MqttClient | TaskChannels


class Transport(Protocol):
    def publish(
        self,
        topic: str,
        payload: bytes,
        *,
        qos: int = 1,
        retain: bool = False,
        user_properties: dict[str, str] | None = None,
    ) -> asyncio.Future[None]: ...

    def ack(self, msg: MqttMessage) -> None: ...

    async def wait_for_window(self) -> None: ...

    @property
    def window_full(self) -> bool: ...


class NoRoute(LookupError):
    pass


class Transports:
    def __init__(self, names: Names, mqtt: MqttChannels | None, nats: NatsChannels | None) -> None:
        self.names = names
        self.mqtt = mqtt
        self.nats = nats
        self.taken_over = mqtt.taken_over if mqtt is not None else asyncio.Event()

    @property
    def clients(self) -> list[MqttChannels | NatsChannels]:
        return [c for c in (self.mqtt, self.nats) if c is not None]

    def client(self, topic: str) -> MqttChannels | NatsChannels:
        if self.names.is_subject(topic):
            if self.nats is None:
                raise NoRoute(f"{topic} is a NATS channel, and this device has no NATS connection")
            return self.nats
        if self.mqtt is None:
            raise NoRoute(f"{topic} is an MQTT channel, and this task has no MQTT connection")
        return self.mqtt

    def publish(
        self,
        topic: str,
        payload: bytes,
        *,
        qos: int = 1,
        retain: bool = False,
        user_properties: dict[str, str] | None = None,
    ) -> asyncio.Future[None]:
        return self.client(topic).publish(
            topic, payload, qos=qos, retain=retain, user_properties=user_properties
        )

    def ack(self, msg: MqttMessage) -> None:
        source = msg.source if msg.source is not None else self.mqtt
        if source is not None:
            source.ack(msg)

    async def wait_for_window(self) -> None:
        for c in self.clients:
            await c.wait_for_window()

    @property
    def window_full(self) -> bool:
        return any(c.window_full for c in self.clients)

    @property
    def connected(self) -> bool:
        return all(c.connected for c in self.clients)

    async def start(self) -> None:
        """Connect every client at once (a NATS connection's login is the longest step of a
        deployment: the MQTT side need not wait for it)."""
        await asyncio.gather(*(c.start() for c in self.clients))

    async def subscribe(self, topics: list[str], qos: int = 1) -> None:
        by_client: dict[int, tuple[MqttChannels | NatsChannels, list[str]]] = {}
        for t in topics:
            c = self.client(t)
            by_client.setdefault(id(c), (c, []))[1].append(t)
        await asyncio.gather(*(c.subscribe(ts, qos=qos) for c, ts in by_client.values()))

    async def close(self, *, discard_session: bool = False) -> None:
        await asyncio.gather(*(c.close(discard_session=discard_session) for c in self.clients))
