"""The master's control link to the agents over MQTT.

Commands go to ``{ns}/dev/{device}/cmd`` (QoS 1, into the agent's persistent session, so
an agent that is briefly away gets them when it returns) with the trace context in
MQTT 5 user properties. Acks, task status and periodic checkpoints come back on the per-device ``ack``,
``status`` and ``ckpt`` topics into the master's own persistent session; they are applied to Redis
in arrival order by one worker and only then acknowledged to the broker, so a master
killed at any moment loses none of them.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import time
from collections.abc import Awaitable, Callable

from pydantic import ValidationError

from echo_shared.errors import RequestTimeout
from echo_shared.messages import CommandAck, DeployTask, StopTask, TaskCheckpoint, TaskStatus
from echo_shared.mqtt import MqttClient, MqttMessage
from echo_shared.names import Names
from echo_shared.telemetry import inject

log = logging.getLogger(__name__)

StatusHandler = Callable[[TaskStatus | CommandAck], Awaitable[None]]
CheckpointHandler = Callable[[TaskCheckpoint], Awaitable[None]]


class AgentLink:
    def __init__(
        self, url: str, names: Names, on_update: StatusHandler, on_checkpoint: CheckpointHandler | None = None
    ) -> None:
        self.names = names
        self._on_update = on_update
        self._on_checkpoint = on_checkpoint
        self._waiters: dict[str, asyncio.Future[CommandAck]] = {}
        self._queue: collections.deque[MqttMessage] = collections.deque()
        self._wake = asyncio.Event()
        self.mqtt = MqttClient(
            url,
            names.service_client_id("master"),
            on_message=self._on_message,
            persistent=True,
            manual_ack=True,
            receive_maximum=1000,
        )

    async def start(self) -> None:
        await self.mqtt.start(timeout=30)
        await self.mqtt.subscribe(
            [
                self.names.any_device_topic("ack"),
                self.names.any_device_topic("status"),
                self.names.any_device_topic("ckpt"),
            ]
        )

    async def close(self) -> None:
        await self.mqtt.close()

    # ------------------------------------------------------------------ commands

    async def send(self, device: str, cmd: DeployTask | StopTask, timeout: float) -> CommandAck:
        """Send a command and wait for its ack (``RequestTimeout`` if none comes in time)."""
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[CommandAck] = loop.create_future()
        self._waiters[cmd.cmd_id] = fut
        try:
            self.mqtt.publish(
                self.names.command_topic(device), cmd.to_bytes(), qos=1, user_properties=inject() or None
            )
            return await asyncio.wait_for(fut, timeout)
        except TimeoutError as e:
            raise RequestTimeout(f"{device} did not ack {cmd.kind} of {cmd.task} within {timeout}s") from e
        finally:
            self._waiters.pop(cmd.cmd_id, None)

    # ------------------------------------------------------------------ intake

    def _on_message(self, msg: MqttMessage) -> None:
        self._queue.append(msg)
        self._wake.set()

    async def run(self, stop: asyncio.Event) -> None:
        """Apply acks and status reports in arrival order until ``stop``."""
        while not stop.is_set():
            if not self._queue:
                self._wake.clear()
                waiter = asyncio.ensure_future(self._wake.wait())
                stopper = asyncio.ensure_future(stop.wait())
                await asyncio.wait({waiter, stopper}, return_when=asyncio.FIRST_COMPLETED)
                waiter.cancel()
                stopper.cancel()
                continue
            msg = self._queue.popleft()
            try:
                update: TaskStatus | CommandAck
                if msg.topic.endswith("/ckpt"):
                    if self._on_checkpoint is not None:
                        await self._on_checkpoint(TaskCheckpoint.from_bytes(msg.payload))
                    self.mqtt.ack(msg)
                    continue
                if msg.topic.endswith("/ack"):
                    update = CommandAck.from_bytes(msg.payload)
                    fut = self._waiters.get(update.cmd_id)
                    if fut is not None and not fut.done():
                        fut.set_result(update)
                else:
                    update = TaskStatus.from_bytes(msg.payload)
                await self._on_update(update)
            except ValidationError as e:
                log.warning("dropping malformed message on %s: %s", msg.topic, e.errors()[:3])
            except Exception:
                log.exception("failed to apply %s; it will be redelivered", msg.topic)
                continue
            self.mqtt.ack(msg)


def now() -> float:
    return time.time()
