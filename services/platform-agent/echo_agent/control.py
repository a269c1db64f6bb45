"""Control commands from the master: deploy and stop, fenced by generation, always acked.

Commands may arrive twice (at-least-once) and out of date; each is harmless the second
time: a deploy of the generation already running acks its current state, a command of
an older generation than the one running (or last stopped) is refused as stale.
Commands for one task run one at a time; different tasks deploy concurrently.

A deploy of an operator whose runtime this device does not offer (``runtimes``, an
``echo_agent.runtimes.RuntimePolicy``: ``process`` and ``container`` only when enabled) is
refused whatever placement decided: its ack is ``ok=false``, state ``failed``, with the
reason (``runtime 'process' is not enabled on device edge-1 (start echo-agent with
--runtime process)``), and nothing of it starts.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from opentelemetry.trace import SpanKind
from pydantic import ValidationError

from echo_shared import statedelta, stateslices
from echo_shared.credentials import Access, Login
from echo_shared.messages import (
    COMMAND_ADAPTER,
    CheckpointStored,
    CommandAck,
    DeployTask,
    LoginAhead,
    Message,
    StageState,
    StopTask,
    TaskBrief,
    TaskStatus,
)
from echo_shared.models import TaskState
from echo_shared.mqtt import MqttClient, MqttMessage
from echo_shared.names import Names
from echo_shared.telemetry import extract, tracer

from .dataplane.datasession import DataSession
from .dataplane.natslink import NatsLogins
from .dataplane.outbox import SpoolSettings
from .localtasks import LocalTasks
from .running import TaskRunner
from .runtimes import RuntimePolicy
from .staging import StagedStateMissing, StagedStates

log = logging.getLogger(__name__)

N = TypeVar("N", bound=Message)
Key = tuple[str, str]


class TaskManager:
    def __init__(
        self,
        *,
        device: str,
        mqtt_url: str,
        names: Names,
        data_dir: Path,
        session_expiry: int,
        publish: Callable[[str, bytes | list[bytes]], object],
        channel_window: int,
        nats_url: str | None = None,
        checkpoint_interval: float = 0.0,
        trace_records: float = 0.0,
        access: Access | None = None,
        runtimes: RuntimePolicy | None = None,
        shared_data_session: bool = True,
        spools: SpoolSettings | None = None,
        local: LocalTasks | None = None,
        keepalive: int = 10,
    ) -> None:
        # output spools (their directory: one per task below it), and the tasks kept on disk
        self.spools = spools
        self.local = local or LocalTasks(None)
        # the data session's keep-alive: a link lost unnoticed is found within 1.5 of it
        # (then the outputs spool), as the control session's is for liveness
        self.keepalive = keepalive
        self.trace_records = trace_records
        # one MQTT connection for the channels of all tasks (False: one session per task)
        self.shared_data_session = shared_data_session
        self._data: DataSession | None = None
        self.device = device
        # what this device runs (default: the safe defaults, no external programs)
        self.runtimes = runtimes or RuntimePolicy.decide(device)
        self.access = access  # logins and CA of this device (replaced when credentials rotate)
        self.mqtt_url = mqtt_url
        self.names = names
        self.data_dir = data_dir
        self.session_expiry = session_expiry
        self.channel_window = channel_window
        self.nats_url = nats_url
        self.checkpoint_interval = checkpoint_interval
        self._publish = publish
        self.control: MqttClient | None = None
        self.tasks: dict[Key, TaskRunner] = {}
        self.tombstones: dict[Key, int] = {}  # generation last stopped, per task
        self.staged = StagedStates()  # moving tasks' states sent ahead (pre-copy)
        self._locks: dict[Key, asyncio.Lock] = {}
        self._inflight: set[asyncio.Task[None]] = set()
        self._nats: NatsLogins | None = None
        self._shutting_down = False
        self._last_counts: dict[Key, tuple[float, int, int]] = {}
        self._tracer = tracer("echo.agent")

    # ---------------------------------------------------------------- intake

    def on_command(self, msg: MqttMessage) -> None:
        # when it arrived: its grant was made before it was sent, so a NATS login begun
        # from now on carries the task's channels (``natslink``)
        t = asyncio.create_task(self._handle(msg, asyncio.get_running_loop().time()))
        self._inflight.add(t)
        t.add_done_callback(self._inflight.discard)

    def _notice(self, msg: MqttMessage, kind: type[N]) -> N | None:
        """A notice from the master (no answer): parsed, and its delivery acknowledged
        either way (a malformed one is dropped, with a warning)."""
        self._ack_mqtt(msg)
        try:
            return kind.from_bytes(msg.payload)
        except ValidationError as e:
            log.warning("dropping a malformed %s: %s", kind.__name__, e.errors()[:3])
            return None

    def on_checkpoint_stored(self, msg: MqttMessage) -> None:
        """The master kept a checkpoint of one of our tasks: its progress may follow it."""
        notice = self._notice(msg, CheckpointStored)
        if notice is None:
            return
        runner = self.tasks.get((notice.dataflow, notice.task))
        if runner is not None and runner.generation == notice.generation and runner.checkpoints is not None:
            runner.checkpoints.stored(notice.taken_at, notice.kept, notice.base)

    def on_login_ahead(self, msg: MqttMessage) -> None:
        """A deployment wave's NATS channels are granted: begin the login its tasks share."""
        notice = self._notice(msg, LoginAhead)
        logins = self.nats_logins()
        if notice is not None and logins is not None and not self._shutting_down:
            logins.ahead(notice.commands)

    async def _parse(self, msg: MqttMessage) -> DeployTask | StopTask | StageState:
        """A command; one carrying a large state in slices (``stateslices``) is read around
        it, and the state a slice at a time, letting the loop run (1 GB parsed at once holds
        it for seconds: the agent would miss its keepalive and its heartbeats)."""
        found = stateslices.split_message(msg.pieces())
        if found is None:
            return COMMAND_ADAPTER.validate_json(msg.data())
        head, pieces = found
        cmd = COMMAND_ADAPTER.validate_json(head)
        if isinstance(cmd, StageState):
            cmd.state = await stateslices.load_pieces(pieces)
        elif isinstance(cmd, DeployTask) and cmd.restore is not None:
            cmd.restore.state = await stateslices.load_pieces(pieces)
        else:
            raise stateslices.SliceError(f"a {cmd.kind} command carries no state")
        return cmd

    async def _handle(self, msg: MqttMessage, received_at: float | None = None) -> None:
        try:
            cmd = await self._parse(msg)
        except ValidationError as e:
            log.warning("dropping malformed command: %s", e.errors()[:3])
            self._ack_mqtt(msg)
            return
        except stateslices.SliceError as e:
            log.warning("dropping malformed command: %s", e)
            self._ack_mqtt(msg)
            return
        ctx = extract(msg.user_properties)
        with self._tracer.start_as_current_span(
            f"agent {cmd.kind} {cmd.task}", context=ctx, kind=SpanKind.CONSUMER
        ) as span:
            span.set_attribute("echo.device", self.device)
            span.set_attribute("echo.dataflow", cmd.dataflow)
            span.set_attribute("echo.task", cmd.task)
            span.set_attribute("echo.generation", cmd.generation)
            lock = self._locks.setdefault((cmd.dataflow, cmd.task), asyncio.Lock())
            async with lock:
                if isinstance(cmd, DeployTask):
                    ack = await self.deploy(cmd, received_at)
                elif isinstance(cmd, StopTask):
                    ack = await self.stop(cmd)
                else:
                    ack = self.stage(cmd)
                span.set_attribute("echo.state", ack.state.value)
                self._publish(self.names.ack_topic(self.device), ack.to_bytes())
                if isinstance(cmd, DeployTask):
                    # kept on disk once the master has its answer (a synced write: not on the
                    # deployment's path), under the task's lock (a stop after it forgets it)
                    await self._keep(cmd)
        self._ack_mqtt(msg)

    async def _keep(self, cmd: DeployTask) -> None:
        """A task started by ``cmd`` and running: its command on disk, resumed from it if the
        agent restarts (a repeated deploy of a running generation started nothing). A large
        restored state is written in slices, from a copy, the file off the loop."""
        runner = self.tasks.get((cmd.dataflow, cmd.task))
        if runner is None or runner.cmd is not cmd or runner.state is not TaskState.running:
            return
        state = cmd.restore.state if cmd.restore is not None else None
        if not isinstance(state, dict) or not stateslices.wants_slices(state):
            self.local.save(cmd)
            return
        pieces = await stateslices.dump_pieces(stateslices.detach(state))
        await asyncio.to_thread(self.local.save, cmd, pieces)

    def _ack_mqtt(self, msg: MqttMessage) -> None:
        if self.control is not None:
            self.control.ack(msg)

    def _ack(
        self, cmd: DeployTask | StopTask | StageState, ok: bool, state: TaskState, reason: str = ""
    ) -> CommandAck:
        return CommandAck.answering(cmd, self.device, ok, state, reason)

    def publish_checkpoint(self, payload: bytes | list[bytes]) -> object:
        """A task's ``TaskCheckpoint`` to the master (QoS 1; the future resolves on the PUBACK)."""
        return self._publish(self.names.checkpoint_topic(self.device), payload)

    def report(self, status: TaskStatus) -> None:
        if self._shutting_down:
            return  # the tasks resume when the device returns; they did not stop by intent
        if status.state is TaskState.finished:
            self.local.forget(status.dataflow, status.task)  # nothing to resume
        self._publish(self.names.status_topic(self.device), status.to_bytes())

    # ---------------------------------------------------------------- commands

    async def deploy(self, cmd: DeployTask, received_at: float | None = None) -> CommandAck:
        key = (cmd.dataflow, cmd.task)
        if self.tombstones.get(key, -1) >= cmd.generation:
            return self._ack(cmd, False, TaskState.stopped, "generation already stopped on this device")
        current = self.tasks.get(key)
        if current is not None:
            if current.generation > cmd.generation:
                return self._ack(
                    cmd, False, current.state, f"stale: generation {current.generation} runs here"
                )
            if current.generation == cmd.generation and current.state is not TaskState.stopped:
                if current.consumer is not None:  # the master moved a producer: accept its new copy
                    current.consumer.assign(cmd.inputs)
                return self._ack(cmd, current.state is not TaskState.failed, current.state, current.reason)
        refusal = self.runtimes.refusal(cmd.operator)
        if refusal is not None:
            log.warning("deploy of %s/%s gen %d refused: %s", *key, cmd.generation, refusal)
            return self._ack(cmd, False, TaskState.failed, refusal)
        if cmd.restore is not None:
            try:  # a staged state and the changes since it: the whole state, from here on
                cmd.restore = self.staged.restore(cmd.restore)
                if stateslices.is_sliced(cmd.restore.state):  # read as plain JSON (kept on disk)
                    cmd.restore.state = stateslices.assemble(cmd.restore.state)
            except (StagedStateMissing, ValueError) as e:
                # not a failure of the task: the master sends the state whole when it asks again
                log.warning("deploy of %s/%s gen %d: %s", *key, cmd.generation, e)
                return self._ack(cmd, False, TaskState.pending, str(e))
        if current is not None:
            # an older generation, or this one stopped without being told to (its session was
            # taken, the agent is shutting down): start it afresh
            await current.stop(discard_session=False, reason=f"replaced by generation {cmd.generation}")
        runner = TaskRunner(
            cmd,
            device=self.device,
            mqtt_url=self.mqtt_url,
            names=self.names,
            data_dir=self.data_dir,
            report=self.report,
            session_expiry=self.session_expiry,
            window=self.channel_window,
            nats_url=self.nats_url,
            checkpoint_interval=self.checkpoint_interval,
            trace_records=self.trace_records,
            publish_checkpoint=self.publish_checkpoint,
            access=self.access,
            build=self.runtimes.build,
            session=self.data_session() if self.shared_data_session else None,
            nats_logins=self.nats_logins(),
            received_at=received_at,
            spools=(
                dataclasses.replace(self.spools, directory=self.spools.directory / cmd.dataflow / cmd.task)
                if self.spools is not None
                else None
            ),
            save_local=(
                functools.partial(self.local.checkpoint, cmd.dataflow, cmd.task)
                if self.local.directory is not None
                else None
            ),
        )
        self.tasks[key] = runner
        try:
            await runner.start()
        except Exception as e:  # start() handles what it expects; anything else fails the task
            log.exception("task %s/%s could not start", *key)
            runner.state, runner.reason = TaskState.failed, f"could not start: {type(e).__name__}: {e}"
        return self._ack(cmd, runner.state is not TaskState.failed, runner.state, runner.reason)

    async def resume_local(self, cmds: list[DeployTask]) -> None:
        """At start: run again the tasks kept on disk (``LocalTasks.load``), each from its
        latest local checkpoint, without waiting for the master (which may be out of reach)."""
        for cmd in cmds:
            lock = self._locks.setdefault((cmd.dataflow, cmd.task), asyncio.Lock())
            async with lock:
                ack = await self.deploy(cmd)
            where = f"its checkpoint at seq {cmd.restore.out_seq}" if cmd.restore else "its start"
            log.info(
                "task %s/%s gen %d resumed from %s: %s %s",
                cmd.dataflow,
                cmd.task,
                cmd.generation,
                where,
                ack.state.value,
                ack.reason,
            )

    async def stop(self, cmd: StopTask) -> CommandAck:
        key = (cmd.dataflow, cmd.task)
        current = self.tasks.get(key)
        if current is not None and current.generation > cmd.generation:
            return self._ack(cmd, False, current.state, f"stale: generation {current.generation} runs here")
        self.tombstones[key] = max(self.tombstones.get(key, -1), cmd.generation)
        self.local.forget(cmd.dataflow, cmd.task)  # stopped, moved or fenced: never resumed here
        if current is None:
            return self._ack(cmd, True, TaskState.stopped)
        if cmd.fence:
            # a stale copy: a newer one runs elsewhere and owns the task's session,
            # durable positions and progress reports; stop without touching any of them
            await current.stop(
                discard_session=False,
                reason=f"fenced: a newer copy than generation {current.generation} runs elsewhere",
                fence=True,
            )
            snapshot = None
        elif cmd.final:
            await current.stop(discard_session=True, reason="stopped by the master")
            snapshot = None
        else:
            snapshot = await current.stop(
                discard_session=False, reason="moving", drain=True, delta_from=cmd.delta_from
            )
        self.local.forget(cmd.dataflow, cmd.task)  # again: a checkpoint written meanwhile
        del self.tasks[key]
        ack = self._ack(cmd, True, TaskState.stopped)
        ack.snapshot = snapshot
        return ack

    def stage(self, cmd: StageState) -> CommandAck:
        """Hold a moving task's state for its next copy here (a move's pre-copy)."""
        key = (cmd.dataflow, cmd.task)
        current = self.tasks.get(key)
        if current is not None and current.generation >= cmd.generation:
            return self._ack(cmd, False, current.state, f"stale: generation {current.generation} runs here")
        if self.tombstones.get(key, -1) >= cmd.generation:  # a late redelivery
            return self._ack(cmd, False, TaskState.stopped, "generation already stopped on this device")
        try:
            state = stateslices.assemble(cmd.state)
            state = statedelta.apply(state, cmd.delta) if cmd.delta is not None else state
        except ValueError as e:
            return self._ack(cmd, False, TaskState.pending, f"staged state {cmd.name} not usable: {e}")
        self.staged.put(cmd.name, state)
        log.info("state %s staged for %s/%s gen %d", cmd.name, cmd.dataflow, cmd.task, cmd.generation)
        return self._ack(cmd, True, TaskState.pending)

    # ---------------------------------------------------------------- the data session

    def data_session(self) -> DataSession:
        """The agent's data session, made on first use (``open_data_session`` connects it at start)."""
        if self._data is None:
            self._data = DataSession(
                self.mqtt_url,
                self.names.data_client_id(self.device),
                session_expiry=self.session_expiry,
                login=self.access.mqtt if self.access else None,
                tls=self.access.tls() if self.access else None,
                keepalive=self.keepalive,
            )
        return self._data

    async def open_data_session(self) -> None:
        """Connect the data session ahead of the first task, so a deployment pays no
        handshake (a failure here is retried by the first task that needs it)."""
        if not self.shared_data_session:
            return
        try:
            await self.data_session().start()
        except Exception as e:
            log.info("data session not connected yet (%s); the first task retries", e)

    def relogin(self, login: Login) -> None:
        """New credentials: every MQTT connection of the tasks uses them from its next connect."""
        if self._data is not None:
            self._data.relogin(login)
        for runner in list(self.tasks.values()):
            if runner.mqtt is not None:
                runner.mqtt.relogin(login)

    def nats_logins(self) -> NatsLogins | None:
        """The device's NATS logins, made on first use (None: the device has no NATS)."""
        if self._nats is None and self.nats_url:
            self._nats = NatsLogins(
                self.nats_url,
                self.names,
                self.names.nats_client_name(self.device),
                self.access.nats_options() if self.access else None,
            )
        return self._nats

    def relogin_nats(self, user: str, password: str) -> None:
        """New NATS credentials: every login uses them from its next connect."""
        if self._nats is not None:
            self._nats.relogin(user, password)

    # ---------------------------------------------------------------- views / shutdown

    def report_progress(self) -> None:
        """Counters and the observed output rate of every running task, when they moved."""
        now = time.monotonic()
        for runner in list(self.tasks.values()):
            if runner.state is not TaskState.running:
                continue
            out, last = runner.records_out, self._last_counts.get(runner.key)
            if last is not None and last[1] == out and runner.records_in == last[2]:
                continue
            rate = (out - last[1]) / max(now - last[0], 1e-3) if last is not None else 0.0
            self._last_counts[runner.key] = (now, out, runner.records_in)
            status = runner.status()
            status.rate_out = round(rate, 3)
            self.report(status)

    def briefs(self) -> list[TaskBrief]:
        return [
            TaskBrief(dataflow=r.cmd.dataflow, task=r.cmd.task, generation=r.generation, state=r.state)
            for r in self.tasks.values()
        ]

    async def shutdown(self) -> None:
        """Agent shutdown: stop every task but keep their sessions (they resume elsewhere or here)."""
        self._shutting_down = True
        for t in list(self._inflight):
            t.cancel()
        await asyncio.gather(*self._inflight, return_exceptions=True)
        await asyncio.gather(
            *(r.stop(discard_session=False, reason="agent shutting down") for r in self.tasks.values()),
            return_exceptions=True,
        )
        if self._data is not None:
            await self._data.close()
        if self._nats is not None:
            await self._nats.close()
