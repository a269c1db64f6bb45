"""One task running in-process on the agent's event loop.

A ``TaskRunner`` owns the task's operator, its MQTT session (client id named after the
task, persistent when the task has inputs, so queued input waits for it wherever it
runs next) and its channels. ``start()`` returns once the task is subscribed to its
inputs and running; ``stop()`` ends it (idempotent). State changes are reported
through the ``report`` callback.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from pathlib import Path

from pydantic import ValidationError

from echo_shared.codec import BadDataMessage, decode
from echo_shared.messages import DeployTask, TaskStatus
from echo_shared.models import TaskState
from echo_shared.mqtt import MqttClient, MqttMessage
from echo_shared.names import Names
from echo_shared.operators import Role, lookup

from .channels import DEFAULT_WINDOW, AckQueue, Inputs, Outputs, Progress
from .operators import Operator, SourceOperator, TaskContext, build

log = logging.getLogger(__name__)

LINGER = 0.002  # seconds a source's partial batch may wait before it is sent
DRAIN_TIMEOUT = 10.0


class TaskFailed(Exception):
    pass


class TaskRunner:
    def __init__(
        self,
        cmd: DeployTask,
        *,
        device: str,
        mqtt_url: str,
        names: Names,
        data_dir: Path,
        report: Callable[[TaskStatus], None],
        session_expiry: int,
        receive_maximum: int = 64,
        window: int = DEFAULT_WINDOW,
    ) -> None:
        self.cmd = cmd
        self.device = device
        self.mqtt_url = mqtt_url
        self.names = names
        self.data_dir = data_dir
        self._report = report
        self.session_expiry = session_expiry
        self.receive_maximum = receive_maximum
        self.window = window
        self.state = TaskState.pending
        self.reason = ""
        self.records_in = 0
        self.mqtt: MqttClient | None = None
        self.op: Operator | None = None
        self.outputs: Outputs | None = None
        self.inputs: Inputs | None = None
        self.acks: AckQueue | None = None
        self.progress: Progress | None = None
        self._queue: asyncio.Queue[MqttMessage] = asyncio.Queue()
        self._main: asyncio.Task[None] | None = None
        self._takeover_stop: asyncio.Task[None] | None = None
        self._stopping = False

    @property
    def key(self) -> tuple[str, str]:
        return (self.cmd.dataflow, self.cmd.task)

    @property
    def generation(self) -> int:
        return self.cmd.generation

    @property
    def records_out(self) -> int:
        return self.outputs.emitted if self.outputs else 0

    def _set(self, state: TaskState, reason: str = "", *, report: bool = True) -> None:
        if self.state == state and self.reason == reason:
            return
        self.state, self.reason = state, reason
        log.info("task %s/%s gen %d: %s %s", *self.key, self.generation, state.value, reason)
        if report:
            self._report(self.status())

    def status(self) -> TaskStatus:
        return TaskStatus(
            device=self.device,
            dataflow=self.cmd.dataflow,
            task=self.cmd.task,
            generation=self.generation,
            state=self.state,
            reason=self.reason,
            records_in=self.records_in,
            records_out=self.records_out,
            ts=time.time(),
        )

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        """Build, connect and subscribe; the task is ``running`` (or ``failed``) on return."""
        cmd = self.cmd
        # the states start() reaches travel in the command's ack; only later changes are reported
        self._set(TaskState.deploying, report=False)
        info = lookup(cmd.operator)
        try:
            self.op = build(cmd.operator, cmd.config)
        except (LookupError, ValidationError) as e:
            self._set(TaskState.failed, f"cannot build operator {cmd.operator}: {e}", report=False)
            return
        except Exception as e:  # user code failing in its constructor
            self._set(
                TaskState.failed,
                f"operator {cmd.operator} failed to start: {type(e).__name__}: {e}",
                report=False,
            )
            return
        has_inputs = bool(cmd.inputs)
        self.mqtt = MqttClient(
            self.mqtt_url,
            self.names.task_client_id(cmd.dataflow, cmd.task),
            on_message=self._on_message,
            persistent=has_inputs,
            session_expiry=self.session_expiry,
            receive_maximum=self.receive_maximum,
            manual_ack=True,
        )
        # before connecting: retained progress reports arrive with the subscription
        self.outputs = Outputs(
            self.mqtt,
            cmd.task,
            cmd.generation,
            [b.topic for b in cmd.outputs],
            window=self.window,
            progress_topics={self.names.progress_topic(b.topic): b.peer for b in cmd.outputs},
        )
        self.inputs = Inputs(b.peer for b in cmd.inputs)
        self.acks = AckQueue(self.mqtt)
        self.progress = Progress(
            self.mqtt,
            cmd.task,
            {b.peer: self.names.progress_topic(b.topic) for b in cmd.inputs},
            self.window // 4,
        )
        try:
            await self.mqtt.start()
            if has_inputs:
                await self.mqtt.subscribe([b.topic for b in cmd.inputs], qos=1)
            if cmd.outputs:  # the consumers' progress: our credit (retained, so known at once)
                await self.mqtt.subscribe([self.names.progress_topic(b.topic) for b in cmd.outputs], qos=1)
            ctx = TaskContext(
                cmd.dataflow,
                cmd.task,
                self.device,
                cmd.generation,
                self.data_dir / cmd.dataflow / cmd.task,
                logging.getLogger(f"echo.task.{cmd.task}"),
            )
            await self.op.open(ctx)
        except Exception as e:
            await self._close_mqtt(discard=False)
            self._set(TaskState.failed, f"start failed: {type(e).__name__}: {e}", report=False)
            return
        role = info.role if info else Role.transform
        body = self._run_source() if role is Role.source else self._run_consumer()
        self._set(TaskState.running, report=False)
        self._main = asyncio.create_task(self._guard(body), name=f"task-{cmd.dataflow}-{cmd.task}")

    async def stop(self, *, discard_session: bool, reason: str = "") -> None:
        """Stop the task (idempotent). ``discard_session`` drops its queued input for good."""
        if self._stopping:
            return
        self._stopping = True
        if self.state in (TaskState.running, TaskState.deploying):
            self._set(TaskState.stopping, reason)
        if self._main is not None and not self._main.done():
            self._main.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._main
        if self.op is not None:
            with contextlib.suppress(Exception):
                await self.op.close()
        await self._close_mqtt(discard=discard_session)
        if self.state not in (TaskState.failed, TaskState.finished):
            self._set(TaskState.stopped, reason)

    def _on_message(self, msg: MqttMessage) -> None:
        if msg.topic.endswith("/progress"):
            if self.outputs is not None:
                self.outputs.on_progress(msg)
            if self.mqtt is not None:
                self.mqtt.ack(msg)
        else:
            self._queue.put_nowait(msg)

    async def _close_mqtt(self, *, discard: bool) -> None:
        if self.mqtt is None:
            return
        if discard and self.progress is not None and self.mqtt.connected:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(asyncio.gather(*self.progress.clear()), 2.0)
        await self.mqtt.close(discard_session=discard)

    async def _guard(self, body: object) -> None:
        assert asyncio.iscoroutine(body)
        watcher = asyncio.ensure_future(self._watch_takeover())
        try:
            await body
        except asyncio.CancelledError:
            raise
        except TaskFailed as e:
            self._set(TaskState.failed, str(e))
        except Exception as e:
            log.exception("task %s/%s crashed", *self.key)
            self._set(TaskState.failed, f"{type(e).__name__}: {e}")
        finally:
            watcher.cancel()

    async def _watch_takeover(self) -> None:
        assert self.mqtt is not None
        await self.mqtt.taken_over.wait()
        # an independent task: stop() cancels the body, and with it this watcher
        self._takeover_stop = asyncio.create_task(
            self.stop(discard_session=False, reason="another copy of this task took over its session")
        )

    # ------------------------------------------------------------------ bodies

    async def _finish(self) -> None:
        assert self.outputs is not None and self.op is not None and self.acks is not None
        self.outputs.emit_all(await self.op.close())
        self.op = None
        futs = self.outputs.end_of_stream()
        if futs:
            await asyncio.wait_for(asyncio.gather(*futs), DRAIN_TIMEOUT)
        await self.acks.drain(DRAIN_TIMEOUT)
        await self._close_mqtt(discard=True)  # nothing more will come on this task's channels
        self._set(TaskState.finished)

    async def _run_source(self) -> None:
        assert isinstance(self.op, SourceOperator) and self.outputs is not None
        out = self.outputs
        flusher = asyncio.create_task(self._linger_flush())
        try:
            async for record in self.op.generate():
                out.emit(record)
                if out.full:
                    out.flush()
                    await out.wait_window()
        finally:
            flusher.cancel()
        await self._finish()

    async def _linger_flush(self) -> None:
        assert self.outputs is not None
        out = self.outputs
        while True:
            await out.has_pending.wait()
            await asyncio.sleep(LINGER)
            if out.pending:
                out.flush()

    async def _run_consumer(self) -> None:
        assert self.op is not None and self.outputs is not None
        assert self.inputs is not None and self.acks is not None and self.progress is not None
        op, out, inputs, acks, queue = self.op, self.outputs, self.inputs, self.acks, self._queue
        progress = self.progress
        process = op.process
        while True:
            msg = await queue.get()
            try:
                decoded = decode(msg.payload)
            except BadDataMessage as e:
                log.warning("task %s/%s: dropping bad message on %s: %s", *self.key, msg.topic, e)
                acks.add(msg, [])
                continue
            records = inputs.fresh(decoded)
            for record in records:
                result = process(record)
                if result is not None:
                    for r in result:
                        out.emit(r)
            self.records_in += len(records)
            op.flush()
            acks.add(msg, out.flush())
            progress.maybe_report(inputs.hwm, caught_up=queue.empty())
            if inputs.done:
                break
            await out.wait_window()
        await self._finish()
