"""One task running in-process on the agent's event loop.

A ``TaskRunner`` owns the task's operator, its view of the agent's MQTT data session
(``datasession``: one connection for all the agent's tasks; without one, a session of
the task's own, client id named after the task) and its channels. ``start()`` returns
once the task is subscribed to its inputs and running; ``stop()`` ends it (idempotent).
State changes are reported through the ``report`` callback.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from echo_shared import statedelta
from echo_shared.credentials import Access
from echo_shared.messages import DeployTask, TaskSnapshot, TaskStatus
from echo_shared.models import TaskState
from echo_shared.mqtt import MqttClient, MqttMessage
from echo_shared.names import Names

from .dataplane.channels import DEFAULT_WINDOW, Outputs
from .dataplane.checkpoints import Checkpoints, Publish, SaveLocal, take_snapshot
from .dataplane.consuming import Consumer, call
from .dataplane.datasession import DataSession, TaskChannels
from .dataplane.natschannels import NatsChannels
from .dataplane.natslink import NatsLogins
from .dataplane.outbox import SpoolSettings
from .dataplane.recordtrace import RecordTracer
from .dataplane.transports import Transports
from .operators import Operator, TaskContext
from .runtimes import RuntimePolicy, RuntimeRefused

log = logging.getLogger(__name__)

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
        window: int = DEFAULT_WINDOW,
        nats_url: str | None = None,
        checkpoint_interval: float = 0.0,
        trace_records: float = 0.0,
        publish_checkpoint: Publish | None = None,
        access: Access | None = None,
        build: Callable[[DeployTask], Operator] | None = None,
        session: DataSession | None = None,
        spools: SpoolSettings | None = None,
        save_local: SaveLocal | None = None,
        nats_logins: NatsLogins | None = None,
        received_at: float | None = None,
    ) -> None:
        self.cmd = cmd
        # the agent's NATS logins, shared by tasks deployed together (None: a login of the
        # task's own); ``received_at``: the loop time its command arrived, after its grant
        self.nats_logins = nats_logins
        self.received_at = received_at
        # the task's output spools (None: a cut-off producer waits) and where its checkpoints
        # are kept on the device (None: only the master has them)
        self.spools = spools
        self._save_local = save_local
        # the agent's data session (one MQTT connection for all its tasks); None: a session
        # of the task's own (tests, tools)
        self.session = session
        # the device's gate (``RuntimePolicy.build``): refuses what the device does not run and
        # confines external programs (default: the safe defaults, no external programs)
        self._build = build or RuntimePolicy.decide(device).build
        self.access = access
        self.device = device
        self.mqtt_url = mqtt_url
        self.names = names
        self.data_dir = data_dir
        self._report = report
        self.session_expiry = session_expiry
        self.window = window
        self.nats_url = nats_url
        # periodic checkpoints (TaskCheckpoint through ``publish_checkpoint``): on when both set
        self.checkpoint_interval = checkpoint_interval if publish_checkpoint is not None else 0.0
        self._publish_checkpoint = publish_checkpoint
        self.checkpoints: Checkpoints | None = None
        self.records = RecordTracer(trace_records, dataflow=cmd.dataflow, task=cmd.task, device=device)
        self.fenced = False
        self.state = TaskState.pending
        self.reason = ""
        self.mqtt: MqttClient | TaskChannels | None = None
        self.transport: Transports | None = None
        self.op: Operator | None = None
        self.outputs: Outputs | None = None
        self.consumer: Consumer | None = None
        self._main: asyncio.Task[None] | None = None
        self._takeover_stop: asyncio.Task[Any] | None = None
        self._stopping = False
        self.draining = False
        self.snapshot_taken: TaskSnapshot | None = None

    @property
    def key(self) -> tuple[str, str]:
        return (self.cmd.dataflow, self.cmd.task)

    @property
    def generation(self) -> int:
        return self.cmd.generation

    @property
    def records_out(self) -> int:
        return self.outputs.emitted if self.outputs else 0

    @property
    def records_in(self) -> int:
        return self.consumer.records_in if self.consumer else 0

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
            reason=self.reason or self._stalled(),
            records_in=self.records_in,
            records_out=self.records_out,
            out_seq=self.outputs.seq if self.outputs is not None else 0,
            hwm=dict(self.consumer.inputs.hwm) if self.consumer is not None else {},
            channels=self.outputs.channel_counts() if self.outputs is not None else {},
            ts=time.time(),
        )

    def _stalled(self) -> str:
        """While running: the output edges that stopped moving (else nothing)."""
        if self.state is not TaskState.running or self.outputs is None or not self.outputs.stalled:
            return ""
        return "; ".join(sorted(self.outputs.stalled.values()))

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        """Build, connect and subscribe; the task is ``running`` (or ``failed``) on return."""
        cmd = self.cmd
        # the states start() reaches travel in the command's ack; only later changes are reported
        self._set(TaskState.deploying, report=False)
        try:
            self.op = self._build(cmd)
        except RuntimeRefused as e:
            self._set(TaskState.failed, str(e), report=False)
            return
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
        data_dir = self.data_dir / cmd.dataflow / cmd.task
        channels = [b.topic for b in (*cmd.inputs, *cmd.outputs)]
        uses_nats = any(self.names.is_subject(c) for c in channels)
        uses_mqtt = not channels or any(not self.names.is_subject(c) for c in channels)
        if uses_nats and not self.nats_url:
            self._set(
                TaskState.failed,
                f"a channel of {cmd.task} is on NATS, and {self.device} has no NATS URL",
                report=False,
            )
            return
        client_id = self.names.task_client_id(cmd.dataflow, cmd.task)
        mqtt: MqttClient | TaskChannels | None
        if not uses_mqtt:
            mqtt = None
        elif self.session is not None:
            mqtt = self.session.channels(cmd.task, self._on_message)
        else:
            mqtt = MqttClient(
                self.mqtt_url,
                client_id,
                on_message=self._on_message,
                persistent=has_inputs,
                session_expiry=self.session_expiry,
                receive_maximum=Consumer.receive_maximum(self.op, cmd.outputs),
                manual_ack=True,
                login=self.access.mqtt if self.access else None,
                tls=self.access.tls() if self.access else None,
            )
        nats = (
            NatsChannels(
                self.nats_logins
                or NatsLogins(
                    self.nats_url, self.names, client_id, self.access.nats_options() if self.access else None
                ),
                self.names,
                client_id,
                self._on_message,
                since=self.received_at,
                cmd_id=cmd.cmd_id,
            )
            if uses_nats and self.nats_url
            else None
        )
        self.transport = Transports(self.names, mqtt, nats)
        self.mqtt = mqtt
        restore = cmd.restore
        if restore is not None and restore.state is not None:
            try:
                self.op.restore(restore.state)
            except Exception as e:
                self._set(
                    TaskState.failed, f"cannot restore {cmd.operator}: {type(e).__name__}: {e}", report=False
                )
                return
        # before connecting: retained progress reports arrive with the subscription
        self.outputs = Outputs(
            self.transport,
            cmd.task,
            cmd.generation,
            cmd.outputs,
            self.names,
            window=self.window,
            start_seq=restore.out_seq if restore else 0,
            tail=restore.tail if restore else None,
            spools=self.spools,
        )
        if has_inputs:
            self.consumer = Consumer(
                task=cmd.task,
                op=self.op,
                mqtt=self.transport,
                outputs=self.outputs,
                inputs=cmd.inputs,
                names=self.names,
                data_dir=data_dir,
                window=self.window,
                restore=restore,
                generation=cmd.generation,
                gated=self.checkpoint_interval > 0,
                shared_session=self.session is not None,
                records_tracer=self.records if self.records.on else None,
            )
        if self.checkpoint_interval > 0 and self._publish_checkpoint is not None:
            consumer, op = self.consumer, self.op
            self.checkpoints = Checkpoints(
                interval=self.checkpoint_interval,
                publish=self._publish_checkpoint,
                device=self.device,
                dataflow=cmd.dataflow,
                task=cmd.task,
                generation=cmd.generation,
                outputs=self.outputs,
                inputs=consumer.inputs if consumer is not None else None,
                snapshot=op.snapshot,
                # a consumer's progress waits for its checkpoints: take them often enough
                # that its producers never run out of credit
                every=max(1, self.window // 4) if consumer is not None else None,
                restored=restore,
                on_published=consumer.on_checkpointed if consumer is not None else None,
                save_local=self._save_local,
                epoch=op.epoch,
                delta=op.delta,
            )
            if consumer is not None:
                consumer.checkpoints = self.checkpoints
        try:
            await self.transport.start()
            # the inputs, and for the outputs the consumers' progress (our credit; retained)
            # and their resend requests: one round trip
            topics = [b.topic for b in cmd.inputs] + self.outputs.subscriptions()
            if topics:
                await self.transport.subscribe(topics, qos=1)
            if self.consumer is not None:
                self.consumer.progress.announce(self.consumer.inputs.hwm)
            await self.outputs.start()
            ctx = TaskContext(
                cmd.dataflow,
                cmd.task,
                self.device,
                cmd.generation,
                data_dir,
                logging.getLogger(f"echo.task.{cmd.task}"),
                mqtt_url=self.mqtt_url,
                nats_url=self.nats_url,
                access=self.access,
                emit=self.outputs.emit_all,
            )
            await self.op.open(ctx)
        except Exception as e:
            await self._teardown(discard=False)
            self._set(TaskState.failed, f"start failed: {type(e).__name__}: {e}", report=False)
            return
        body = self._run_consumer() if has_inputs else self._run_source()
        self._set(TaskState.running, report=False)
        self._main = asyncio.create_task(self._guard(body), name=f"task-{cmd.dataflow}-{cmd.task}")

    async def stop(
        self,
        *,
        discard_session: bool,
        reason: str = "",
        drain: bool = False,
        fence: bool = False,
        delta_from: float | None = None,
    ) -> TaskSnapshot | None:
        """Stop the task (idempotent). ``discard_session`` drops its queued input for good.

        ``drain`` (a move): stop taking input at a safe point, finish what is in hand, wait
        until its consumers confirmed every output, and return a snapshot of where the task
        stands, so a copy elsewhere continues exactly there. ``delta_from``: the target
        holds the state of the checkpoint taken then; the snapshot's state is only what
        changed since it, if the operator can say (``statedelta.changes``).

        ``fence``: this copy is stale (a newer generation runs elsewhere): stop at once, and
        leave everything it shares with the newer copy alone (the task's MQTT session, its
        durable consumers, its progress reports).
        """
        if fence:
            self.fenced = True
            discard_session, drain = False, False
        if self._stopping:
            return self.snapshot_taken
        self._stopping = True
        if self.state in (TaskState.running, TaskState.deploying):
            self._set(TaskState.stopping, reason)
        if self.checkpoints is not None and not drain:
            await self.checkpoints.close()  # no checkpoint of a copy on its way out
        if drain and self.state is TaskState.stopping and self._main is not None and not self._main.done():
            self.snapshot_taken = await self._drain(delta_from)
        else:
            await self._cancel_main()
            if self.op is not None:
                with contextlib.suppress(Exception):
                    await call(self.op.close())
        await self._teardown(discard=discard_session and not self.fenced)
        if self.state not in (TaskState.failed, TaskState.finished):
            self._set(TaskState.stopped, reason)
        return self.snapshot_taken

    async def _cancel_main(self) -> None:
        """Cancel the task's body and wait for it to end (cancelling again if a cancel is lost)."""
        main = self._main
        while main is not None and not main.done():
            main.cancel()
            await asyncio.wait({main}, timeout=1.0)

    async def _drain(self, delta_from: float | None = None) -> TaskSnapshot | None:
        assert self._main is not None and self.outputs is not None
        self.draining = True
        if self.consumer is not None:
            self.consumer.request_stop()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await asyncio.wait_for(asyncio.shield(self._main), DRAIN_TIMEOUT)
        if not self._main.done() or self.op is None:  # stuck, or it failed meanwhile
            await self._cancel_main()
            return None
        op, out = self.op, self.outputs
        if self.checkpoints is not None:
            await self.checkpoints.close()  # the drain snapshot supersedes them
        try:
            if self.consumer is not None:
                await self.consumer.settle()
                # the next copy restores this snapshot, which is complete: its producers
                # need keep nothing of what we took
                self.consumer.ungate()
            out.emit_all(await op.suspend())
            self.op = None
            await out.settle(DRAIN_TIMEOUT)
        except Exception as e:
            log.warning("task %s/%s could not drain cleanly: %s", *self.key, e)
            return None
        state = self._drained_state(op, delta_from)
        snap = take_snapshot(out, self.consumer.inputs if self.consumer else None, state)
        snap.kind, snap.tail = "drain", out.tail()
        return snap

    def _drained_state(self, op: Operator, delta_from: float | None) -> Any:
        """The operator's state for the drain: the changes since the checkpoint taken at
        ``delta_from`` when it can say them, else the whole state."""
        if delta_from is not None and self.checkpoints is not None and op.epoch() is not None:
            epoch = self.checkpoints.epoch_of(delta_from)
            if epoch is not None:
                try:
                    return statedelta.changes(op.delta(epoch), delta_from)
                except Exception as e:  # the whole state, then: slower, still right
                    log.warning("task %s/%s: no delta of its state (%s): sending it whole", *self.key, e)
        return op.snapshot()

    def _on_message(self, msg: MqttMessage) -> None:
        if self.consumer is not None and msg.topic in self.consumer.bindings:
            self.consumer.queue.put_nowait(msg)
            return
        if self.outputs is not None:
            self.outputs.on_control(msg)  # progress reports and file resend requests
        if self.transport is not None:
            self.transport.ack(msg)

    async def _teardown(self, *, discard: bool, clear_progress: bool | None = None) -> None:
        """Leave the channels; ``discard``: the task is gone for good (its durable positions
        go, and its progress reports unless ``clear_progress`` is False). A fenced copy never
        discards: what it shares with the task belongs to the newer copy now."""
        if self.checkpoints is not None:
            await self.checkpoints.close()
        # a fenced copy's spool goes too: the newer copy emits everything after its checkpoint
        remove_spools = discard or self.fenced
        if self.fenced or (self.transport is not None and self.transport.taken_over.is_set()):
            discard, clear_progress = False, False
        if self.outputs is not None:
            await self.outputs.stop()
            await self.outputs.close_spools(remove=remove_spools)
        if self.consumer is not None:
            self.consumer.close()
        if self.transport is None:
            return
        clear = discard if clear_progress is None else clear_progress
        if clear and self.consumer is not None and self.transport.connected:
            with contextlib.suppress(Exception):
                async with asyncio.timeout(2.0):
                    await asyncio.gather(*self.consumer.progress.clear())
        await self.transport.close(discard_session=discard)

    async def _guard(self, body: object) -> None:
        assert asyncio.iscoroutine(body)
        watcher = asyncio.ensure_future(self._watch_takeover())
        try:
            await body
        except asyncio.CancelledError:
            raise
        except TaskFailed as e:
            self._set(TaskState.failed, str(e))
            await self._release()
        except Exception as e:
            log.exception("task %s/%s crashed", *self.key)
            self._set(TaskState.failed, f"{type(e).__name__}: {e}")
            await self._release()
        finally:
            watcher.cancel()

    async def _release(self) -> None:
        """After a failure: end the operator (and any program it runs) and leave the channels;
        the task's session stays, so a redeploy continues from its queued input."""
        if self.op is not None:
            with contextlib.suppress(Exception):
                await call(self.op.close())
            self.op = None
        with contextlib.suppress(Exception):
            await self._teardown(discard=False)

    async def _watch_takeover(self) -> None:
        assert self.transport is not None
        await self.transport.taken_over.wait()
        # an independent task: stop() cancels the body, and with it this watcher
        self._takeover_stop = asyncio.create_task(
            self.stop(discard_session=False, reason="another copy of this task took over its session")
        )

    # ------------------------------------------------------------------ bodies

    async def _finish(self) -> None:
        assert self.outputs is not None and self.op is not None
        if self.checkpoints is not None:
            await self.checkpoints.close()  # a finished task does not fail over
        self.outputs.emit_all(await call(self.op.close()))
        self.op = None
        await self.outputs.end_of_stream()
        if self.consumer is not None:
            await self.consumer.acks.drain(DRAIN_TIMEOUT)
        # nothing more will come on this task's channels; the final reports (end of stream
        # confirmed) stay: a delete right behind the last report could hide it from a
        # producer still waiting for it (a KV bucket keeps one entry per key)
        await self._teardown(discard=True, clear_progress=False)
        self._set(TaskState.finished)

    async def _run_source(self) -> None:
        assert self.op is not None and self.outputs is not None
        generate = getattr(self.op, "generate", None)
        if not callable(generate):
            raise TaskFailed(f"{self.cmd.operator} is not a source, and no edge feeds it")
        out = self.outputs
        emitted = 0
        ck = self.checkpoints
        records = self.records
        async for record in generate():
            if records.sampled():
                with records.source(out.seq + 1):
                    out.emit(record)
            else:
                out.emit(record)
            if ck is not None and ck.due():
                ck.take()  # between two records: the generator's state matches out.seq
            await out.wait_window()
            if self.draining:
                return  # a move: _drain() takes it from here
            emitted += 1
            if emitted % 64 == 0:
                await asyncio.sleep(0)  # a fast source must not starve the agent's loop
        await self._finish()

    async def _run_consumer(self) -> None:
        assert self.consumer is not None
        await self.consumer.run()
        if not self.draining:
            await self._finish()
