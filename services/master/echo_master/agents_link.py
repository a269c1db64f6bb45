"""The master's control link to the agents over MQTT.

Commands go to ``{ns}/dev/{device}/cmd`` (QoS 1, into the agent's persistent session, so
an agent that is briefly away gets them when it returns) with the trace context in
MQTT 5 user properties. Acks, task status and periodic checkpoints come back on the per-device ``ack``,
``status`` and ``ckpt`` topics into the master's own persistent session; they are applied to Redis
in arrival order by one worker and only then acknowledged to the broker, so a master
killed at any moment loses none of them.

With replicas, each has its own session and subscriptions; the leading one applies the
reports, a standby keeps the latest of each task's reports for a while and applies them
when it is elected (``elected``), so a report sent as the leader died is not lost with it.
Any replica can send credentials (the API's rotations) and gets their acks.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

from pydantic import ValidationError

from echo_shared import stateslices
from echo_shared.credentials import Access
from echo_shared.dynsec import DynsecAdmin
from echo_shared.errors import PermanentError, RequestTimeout
from echo_shared.leases import Fenced
from echo_shared.lifecycle import wait_or_stop
from echo_shared.messages import (
    CheckpointStored,
    CommandAck,
    CredentialsAck,
    DeployTask,
    LoginAhead,
    Message,
    RotateCredentials,
    StageState,
    StopTask,
    TaskCheckpoint,
    TaskStatus,
)
from echo_shared.models import TaskState
from echo_shared.mqtt import MqttClient, MqttMessage
from echo_shared.names import Names
from echo_shared.outage import Backoff, Outage, dependency_of
from echo_shared.telemetry import inject

log = logging.getLogger(__name__)

StatusHandler = Callable[[TaskStatus | CommandAck], Awaitable[None]]
CheckpointHandler = Callable[[TaskCheckpoint], Awaitable[None]]


ENDED = (TaskState.finished, TaskState.failed, TaskState.stopped)
# how long a standby master keeps a task's latest report: long enough to cover the leader's
# death, the lease's expiry and the election (reports older than this the leader applied)
HOLD_SECONDS = 60.0
UNRECORDED_KEPT = 256  # staged-state acks remembered, so a late one is not applied as a report


class SendHooks(Protocol):
    """What must happen around a command (grants before a deploy, withdrawal after a stop)."""

    async def before_send(self, device: str, cmd: DeployTask | StopTask) -> None: ...

    async def after_send(self, device: str, cmd: DeployTask | StopTask) -> None: ...

    async def withdraw(self, device: str, dataflow: str, task: str, generation: int) -> None: ...

    async def prepare(
        self, wave: list[tuple[str, DeployTask]], granted: Callable[[list[str]], None] | None = None
    ) -> None: ...


class AgentLink:
    def __init__(
        self,
        url: str,
        names: Names,
        on_update: StatusHandler,
        on_checkpoint: CheckpointHandler | None = None,
        *,
        access: Access | None = None,
        dynsec: bool = False,
        replica: str = "",
    ) -> None:
        self.names = names
        self._on_update = on_update
        self._on_checkpoint = on_checkpoint
        self.hooks: SendHooks | None = None
        self._waiters: dict[str, asyncio.Future[Any]] = {}
        # commands whose acks say nothing about a task's record (a staged state), lately sent
        self._unrecorded: collections.OrderedDict[str, None] = collections.OrderedDict()
        self.outage = Outage("agent reports: a dependency", log)
        self._queue: collections.deque[MqttMessage] = collections.deque()
        # replicas: whether this one leads (applies reports); a standby holds the latest of
        # each task's reports (``_hold``), applied when it is elected (``_replay``)
        self.leading: Callable[[], bool] = lambda: True
        self._held: dict[tuple[str, str, str], tuple[float, TaskStatus | CommandAck | TaskCheckpoint]] = {}
        self._replay: collections.deque[TaskStatus | CommandAck | TaskCheckpoint] = collections.deque()
        self._wake = asyncio.Event()
        self.mqtt = MqttClient(
            url,
            names.service_client_id("master") + replica,
            on_message=self._on_message,
            persistent=True,
            manual_ack=True,
            receive_maximum=1000,
            login=access.mqtt if access else None,
            tls=access.tls() if access else None,
            yield_session=False,  # a service never goes deaf: it keeps reconnecting
            whole_payloads=False,  # a checkpoint in parts (a large state) is read from its parts
        )
        # the master administers the broker's dynamic security over this same session
        self.dynsec = DynsecAdmin(self.mqtt) if dynsec else None
        # bulk sends (a moving task's staged state, up to hundreds of MB) go on a connection
        # of their own, made on first use: on this one they would hold up every notice and
        # command behind them (a task's kept-checkpoint notices, so its flow, for seconds)
        self._bulk_args = (url, names.service_client_id("master") + replica + "-bulk", access)
        self._bulk: MqttClient | None = None
        self._bulk_lock = asyncio.Lock()

    async def start(self) -> None:
        await self.mqtt.start(timeout=30)
        await self.mqtt.subscribe(
            [
                self.names.any_device_topic("ack"),
                self.names.any_device_topic("status"),
                self.names.any_device_topic("ckpt"),
            ]
        )
        if self.dynsec is not None:
            await self.dynsec.start()

    async def close(self) -> None:
        if self._bulk is not None:
            await self._bulk.close()
        await self.mqtt.close()

    async def _bulk_client(self) -> MqttClient:
        async with self._bulk_lock:
            if self._bulk is None:
                url, client_id, access = self._bulk_args
                bulk = MqttClient(  # publishes only: the acks come on the main session
                    url,
                    client_id,
                    persistent=False,
                    login=access.mqtt if access else None,
                    tls=access.tls() if access else None,
                    yield_session=False,
                )
                await bulk.start(timeout=10)
                self._bulk = bulk
            return self._bulk

    # ------------------------------------------------------------------ commands

    async def send(self, device: str, cmd: DeployTask | StopTask, timeout: float) -> CommandAck:
        """Send a command and wait for its ack (``RequestTimeout`` if none comes in time).

        A deploy's channels are granted to the device before it leaves; a stop's are
        withdrawn once it was answered or timed out (``hooks``). Only the leading replica
        commands devices: ``Fenced`` on a replica that does not lead (its Redis writes are
        fenced by the lease; a command is not a write, so it is refused here)."""
        if not self.leading():
            raise Fenced(f"this master replica does not lead: no {cmd.kind} of {cmd.task} to {device}")
        if self.hooks is not None:
            try:
                await self.hooks.before_send(device, cmd)
            except PermanentError as e:  # refused by policy: the task fails, with the reason
                refused = CommandAck.answering(cmd, device, False, TaskState.failed, f"refused: {e}")
                await self._on_update(refused)
                return refused
        try:
            ack: CommandAck = await self._request(
                device, cmd, cmd.cmd_id, f"{cmd.kind} of {cmd.task}", timeout
            )
            return ack
        finally:
            if self.hooks is not None:
                await self.hooks.after_send(device, cmd)

    async def stage(
        self, device: str, cmd: StageState, timeout: float, *, payload: bytes | list[bytes] | None = None
    ) -> CommandAck:
        """Send a moving task's state ahead to its target and wait for its ack (no grants:
        nothing runs yet; ``RequestTimeout`` if no answer comes in time). ``payload``: the
        command already serialised (its state spliced in as stored)."""
        if not self.leading():
            raise Fenced(f"this master replica does not lead: no state of {cmd.task} to {device}")
        self._unrecorded[cmd.cmd_id] = None
        while len(self._unrecorded) > UNRECORDED_KEPT:
            self._unrecorded.popitem(last=False)
        ack: CommandAck = await self._request(
            device,
            cmd,
            cmd.cmd_id,
            f"state of {cmd.task}",
            timeout,
            payload=payload,
            via=await self._bulk_client(),
        )
        return ack

    def notify(self, device: str, msg: CheckpointStored) -> None:
        """A notice to a device (QoS 1, no answer awaited); only the leading replica sends."""
        if self.leading():
            self.mqtt.publish(self.names.command_topic(device), msg.to_bytes(), qos=1)

    async def prepare(self, wave: list[tuple[str, DeployTask]]) -> None:
        """Before a wave of deploys: what they need, granted at once (``hooks.prepare``);
        once its grants are stored, each device with NATS channels in it is told to begin
        the NATS login its tasks of the wave share (``LoginAhead``), while the rest of the
        preparation (the MQTT broker's roles) runs. (Without hooks nothing is granted, and
        nobody told: each task's login follows its command.)"""
        if not wave or self.hooks is None:
            return
        name = uuid.uuid4().hex[:16]
        commands: dict[str, list[str]] = {}
        for device, cmd in wave:
            commands.setdefault(device, []).append(cmd.cmd_id)

        def granted(devices: list[str]) -> None:
            if not self.leading():
                return
            for device in devices:
                notice = LoginAhead(wave=name, commands=commands.get(device, []))
                self.mqtt.publish(self.names.command_topic(device), notice.to_bytes(), qos=1)

        await self.hooks.prepare(wave, granted)

    async def send_credentials(
        self, device: str, cmd: RotateCredentials, timeout: float = 10.0
    ) -> CredentialsAck:
        ack: CredentialsAck = await self._request(device, cmd, cmd.cmd_id, "new credentials", timeout)
        return ack

    async def _request(
        self,
        device: str,
        cmd: Message,
        cmd_id: str,
        what: str,
        timeout: float,
        *,
        payload: bytes | list[bytes] | None = None,
        via: MqttClient | None = None,
    ) -> Any:
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[Any] = loop.create_future()
        self._waiters[cmd_id] = fut
        try:
            (via or self.mqtt).publish(
                self.names.command_topic(device),
                payload if payload is not None else cmd.to_bytes(),
                qos=1,
                user_properties=inject() or None,
            )
            return await asyncio.wait_for(fut, timeout)
        except TimeoutError as e:
            raise RequestTimeout(f"{device} did not ack {what} within {timeout}s") from e
        finally:
            self._waiters.pop(cmd_id, None)

    # ------------------------------------------------------------------ intake

    def _on_message(self, msg: MqttMessage) -> None:
        if msg.topic.startswith("$CONTROL/"):
            if self.dynsec is not None:
                self.dynsec.on_response(msg)
            self.mqtt.ack(msg)
            return
        self._queue.append(msg)
        self._wake.set()

    def elected(self) -> None:
        """This replica now leads: what it held as a standby is applied first, in arrival
        order (reports the previous leader had applied change nothing: they never move a
        task backwards)."""
        now = time.monotonic()
        held = [h for h in self._held.values() if now - h[0] <= HOLD_SECONDS]  # in hold order already
        self._held.clear()
        self._replay.extend(report for _, report in held)
        if held:
            log.info("applying %d report(s) held while standing by", len(held))
        self._wake.set()

    def stepped_down(self) -> None:
        """No longer the leader: what was still to replay is the next leader's business."""
        self._replay.clear()

    def _hold(self, report: TaskStatus | CommandAck | TaskCheckpoint) -> None:
        """A standby keeps the latest report of each kind per task, for HOLD_SECONDS."""
        now = time.monotonic()
        key = (type(report).__name__, report.dataflow, report.task)
        self._held.pop(key, None)
        self._held[key] = (now, report)
        while self._held:
            first = next(iter(self._held))
            if now - self._held[first][0] <= HOLD_SECONDS:
                break
            del self._held[first]

    async def run(self, stop: asyncio.Event) -> None:
        """Apply acks and status reports in arrival order until ``stop`` (a standby holds
        them instead, ``_hold``)."""
        backoff = Backoff(0.05, 2.0)
        while not stop.is_set():
            if self._replay and self.leading():
                held = self._replay.popleft()
                if not await self._settle(held, stop, backoff):
                    self._replay.appendleft(held)  # tried again, in order
                continue
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
                report = self._parse(msg)
            except ValidationError as e:
                log.warning("dropping malformed message on %s: %s", msg.topic, e.errors()[:3])
                report = None
            if report is not None and not await self._settle(report, stop, backoff):
                self._queue.appendleft(msg)  # the same message again, in order (still unacked)
                continue
            self.mqtt.ack(msg)

    async def _settle(
        self, report: TaskStatus | CommandAck | TaskCheckpoint, stop: asyncio.Event, backoff: Backoff
    ) -> bool:
        """Apply a report (the leader) or hold it (a standby). False: Redis is out of reach,
        to be tried again after the pause; another dependency out of reach (NATS for a large
        checkpoint's state, the broker for a grant) drops it, as a bug does: its agent
        reports again, and the reports behind it are not held up."""
        try:
            if self.leading():
                await self._apply(report)
            else:
                self._hold(report)
        except Fenced:
            self._hold(report)  # the lease was lost under us: kept for a later election
        except Exception as e:
            dependency = dependency_of(e)
            if dependency is None:
                log.exception("failed to apply a report of %s/%s; dropped", report.dataflow, report.task)
                return True
            self.outage.failed(e)
            if dependency == "redis":
                await wait_or_stop(stop, backoff.next())
                return False
            return True
        self.outage.ok()
        backoff.reset()
        return True

    def _parse(self, msg: MqttMessage) -> TaskStatus | CommandAck | TaskCheckpoint | None:
        """The report a message carries (None: nothing to apply, e.g. another device's claim,
        or a credentials ack, which is handed to its waiter here)."""
        sender = self.names.device_from_topic(msg.topic)
        if msg.topic.endswith("/ckpt"):
            ckpt = read_checkpoint(msg.pieces())
            ok = self._on_checkpoint is not None and self._from_sender(ckpt.device, sender, msg)
            return ckpt if ok else None
        payload = msg.data()
        if msg.topic.endswith("/ack"):
            if b'"kind":"credentials"' in payload:
                cred = CredentialsAck.from_bytes(payload)
                fut = self._waiters.get(cred.cmd_id)
                if fut is not None and not fut.done() and self._from_sender(cred.device, sender, msg):
                    fut.set_result(cred)
                return None
            ack = CommandAck.from_bytes(payload)
            if not self._from_sender(ack.device, sender, msg):
                return None
            fut = self._waiters.get(ack.cmd_id)
            if fut is not None and not fut.done():
                fut.set_result(ack)
            return None if ack.cmd_id in self._unrecorded else ack
        status = TaskStatus.from_bytes(payload)
        return status if self._from_sender(status.device, sender, msg) else None

    async def _apply(self, report: TaskStatus | CommandAck | TaskCheckpoint) -> None:
        if isinstance(report, TaskCheckpoint):
            assert self._on_checkpoint is not None
            await self._on_checkpoint(report)
            return
        await self._on_update(report)
        if report.state in ENDED and self.hooks is not None:
            # a task that ended keeps no grant (a newer generation's is left alone)
            await self.hooks.withdraw(report.device, report.dataflow, report.task, report.generation)

    @staticmethod
    def _from_sender(claimed: str, sender: str, msg: MqttMessage) -> bool:
        """A device speaks only for itself: its ACL lets it publish only under its own prefix."""
        if claimed == sender:
            return True
        log.warning("dropping a report of %s sent on %s's topic %s", claimed, sender, msg.topic)
        return False


def read_checkpoint(pieces: list[bytes]) -> TaskCheckpoint:
    """A checkpoint as it came; one whose state is in slices (a large state) is parsed around
    its state, which stays as it came (``RawState``): the master keeps it in the object store
    without parsing it (1 GB: seconds of the loop, which holds the master's lease)."""
    found = stateslices.split_message(pieces)
    if found is None:
        return TaskCheckpoint.from_bytes(b"".join(pieces) if len(pieces) > 1 else pieces[0])
    head, state = found
    ckpt = TaskCheckpoint.from_bytes(head)
    ckpt.snapshot.state = stateslices.RawState(state)
    return ckpt


def now() -> float:
    return time.time()
