"""The consuming side of a task: from channel messages to operator calls, and back to acks.

For each message taken from the task's MQTT session:

- a data message (``stream`` or ``batch`` edge) yields the records not seen before; an
  end-of-stream message marks its producer done;
- a file chunk (``file`` edge) goes to the edge's ``FileReceiver``, which yields a file
  record once the whole file arrived intact;
- records from a ``batch`` edge reach the operator as one batch (``process_batch``; the
  default flattens it into ``process`` calls); records from a ``stream`` or ``file`` edge
  reach it one by one (``process``) — unless the operator ``wants_batches``, in which case
  they are gathered into batches of its ``batch_count`` records or ``batch_seconds``;
- the message is acknowledged (``AckQueue``) once what it caused is safe: outputs at the
  broker, gathered records processed;
- a message that arrives ahead of its turn (brokers reorder: Mosquitto 2.0 ignores a
  client's receive maximum and then delivers out of order; a producer that started
  before its consumer subscribed sends what went to nobody again) is held until the
  records before it arrive; if they do not within ``HOLD_SECONDS`` (or too many messages
  wait), the producer is asked to send everything from the gap on again.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
from pathlib import Path
from typing import Any

from echo_shared.codec import BadDataMessage, decode, decode_chunk, is_chunk
from echo_shared.messages import Binding, ResendRequest, TaskSnapshot
from echo_shared.models import EdgeModel
from echo_shared.mqtt import MqttMessage
from echo_shared.names import Names

from ..operators import Operator, Record
from .channels import Outputs
from .checkpoints import Checkpoints
from .files import RESEND_INTERVAL, FileReceiver
from .intake import AckQueue, Gap, Inputs, Progress, incoming_dir
from .recordtrace import TRACEPARENT, RecordTracer
from .transports import Transport

log = logging.getLogger(__name__)

HOLD_SECONDS = 0.5
YIELD_EVERY = 32
MAX_HELD = 4096


async def call(result: Any) -> Any:
    """The value of an operator call, awaited if the operator is async."""
    if inspect.isawaitable(result):
        return await result
    return result


class Gather:
    """Records gathered for an operator that wants batches, with the messages they came in."""

    def __init__(self, count: int, seconds: float, eager: bool = False) -> None:
        self.count = max(1, count)
        self.seconds = seconds
        self.eager = eager  # run what is gathered as soon as no message waits (``batch_eager``)
        self.records: list[Record] = []
        self.files: list[str] = []
        self.deadline: float | None = None
        self.done: asyncio.Future[None] | None = None

    def add(self, records: list[Record], files: list[str]) -> asyncio.Future[None]:
        loop = asyncio.get_running_loop()
        if self.done is None:
            self.done = loop.create_future()
            self.deadline = loop.time() + self.seconds
        self.records.extend(records)
        self.files.extend(files)
        return self.done

    @property
    def full(self) -> bool:
        return len(self.records) >= self.count

    def timeout(self) -> float | None:
        if self.deadline is None:
            return None
        return max(0.0, self.deadline - asyncio.get_running_loop().time())

    def take(self) -> tuple[list[Record], list[str], asyncio.Future[None] | None]:
        out = (self.records, self.files, self.done)
        self.records, self.files, self.done, self.deadline = [], [], None, None
        return out


class Consumer:
    def __init__(
        self,
        *,
        task: str,
        op: Operator,
        mqtt: Transport,
        outputs: Outputs,
        inputs: list[Binding],
        names: Names,
        data_dir: Path,
        window: int,
        restore: TaskSnapshot | None = None,
        generation: int = 0,
        gated: bool = False,
        records_tracer: RecordTracer | None = None,
        shared_session: bool = False,
    ) -> None:
        self.task = task
        self.records_tracer = records_tracer  # sampled record tracing (None: off)
        self.op = op
        self.mqtt = mqtt
        self.outputs = outputs
        self.bindings = {b.topic: b for b in inputs}
        self.inputs = Inputs((b.peer for b in inputs), hwm=restore.hwm if restore else None)
        if restore is not None:
            self.inputs.eos.update(restore.eos)
        self.acks = AckQueue(mqtt)
        self.progress = Progress(
            mqtt,
            task,
            {b.peer: names.progress_topic(b.topic) for b in inputs},
            window // 4,
            generation=generation,
            # checkpointing: report no further than the checkpoint a copy would restore
            gate=(dict(restore.hwm) if restore else {}) if gated else None,
            # continuing a drained copy: the rest of our input is still in the channels when
            # they are the task's own MQTT session (or NATS work queues); on the agent's shared
            # data session it went to the agent the drained copy ran on, so ask for it again
            replay=restore is None or restore.kind != "drain" or shared_session,
        )
        self.checkpoints: Checkpoints | None = None  # set by the runner when checkpointing is on
        self.receivers = {
            b.topic: FileReceiver(
                mqtt,
                task,
                b.peer,
                names.resend_topic(b.topic),
                incoming_dir(data_dir),
                hwm=self.inputs.hwm.get(b.peer, 0),
            )
            for b in inputs
            if b.model is EdgeModel.file
        }
        self.gather = (
            Gather(
                getattr(op, "batch_count", 100),
                getattr(op, "batch_seconds", 1.0),
                bool(getattr(op, "batch_eager", False)),
            )
            if op.wants_batches
            else None
        )
        self.queue: asyncio.Queue[MqttMessage | None] = asyncio.Queue()
        self.stopping = False
        self.records_in = 0
        self.gaps = 0
        self.generations: dict[str, int] = {}  # producer -> the newest generation seen
        # producer -> the newest generation the master assigned (none: an older master's
        # command; then what is seen counts). Messages of a newer one wait, unacknowledged,
        # until the master assigns it: a generation is never learned from traffic.
        self.assigned: dict[str, int] = {b.peer: b.generation for b in inputs if b.generation is not None}
        self.early: dict[str, list[MqttMessage]] = {}
        self.stale = 0  # messages dropped: from an older copy of their producer
        self._force_report = False
        self._asked: dict[str, tuple[int, float]] = {}  # producer -> (seq asked for, when)
        # producer -> messages that came ahead of their turn: (first seq, message)
        self.held: dict[str, list[tuple[int, MqttMessage]]] = {}
        self._held_since: dict[str, float] = {}
        self._releasing: set[str] = set()
        self._resend_topic = {b.peer: names.resend_topic(b.topic) for b in inputs}

    @staticmethod
    def receive_maximum(op: Operator, outputs: list[Binding]) -> int:
        """Unacknowledged deliveries the task must be able to hold: enough to fill a batch
        it gathers, or an output batch its inputs wait for."""
        need = int(getattr(op, "batch_count", 100)) if op.wants_batches else 0
        for b in outputs:
            if b.batch is not None:
                need = max(need, b.batch.count)
        return min(65535, max(64, 2 * need + 16))

    # ------------------------------------------------------------------ the loop

    async def run(self) -> None:
        """Consume until every producer ended its stream; then the caller finishes the task."""
        queue, gather = self.queue, self.gather
        taken = 0
        while True:
            timeout = gather.timeout() if gather is not None else None
            if self._held_since:  # wake up to ask for what held messages wait for
                timeout = HOLD_SECONDS / 2 if timeout is None else min(timeout, HOLD_SECONDS / 2)
            if self.progress.unreported:  # wake up to report where we are
                gap = Progress.CAUGHT_UP_GAP
                timeout = gap if timeout is None else min(timeout, gap)
            if self.checkpoints is not None:  # wake up to checkpoint what moved
                due = self.checkpoints.wait_time()
                if due is not None:
                    timeout = due if timeout is None else min(timeout, due)
            try:
                # asyncio.timeout, not wait_for: on Python 3.11 wait_for can swallow a
                # cancellation that races with the get, and the task would never stop
                async with asyncio.timeout(timeout):
                    msg = await queue.get()
            except TimeoutError:
                if self.progress.unreported and queue.empty():
                    self.progress.flush_due(self.inputs.hwm, self._file_positions(), self.inputs.eos)
                self._check_held()
                if gather is not None and gather.timeout() == 0:
                    await self._run_gathered()
                self._maybe_checkpoint()
                continue
            if msg is None or self.stopping:
                return  # a move: what is queued here stays unacknowledged, for the next copy
            futs = await self._take(msg)
            if self._held_since:
                # under steady traffic the queue never times out: look at held gaps here too,
                # or a lost message is asked for only once MAX_HELD messages wait behind it
                self._check_held()
            if futs is None:
                continue  # waits, unacknowledged, for its producer's generation to be assigned
            self.op.flush()
            self.acks.add(msg, [*futs, *self.outputs.flush()])
            if gather is not None and gather.eager and gather.records and queue.empty():
                await self._run_gathered()  # nothing more in hand: the batch goes now
            if self.inputs.done:
                self.progress.gate = None  # the end: this task finishes, and never fails over
            self.progress.maybe_report(
                self.inputs.hwm,
                caught_up=queue.empty(),
                files=self._file_positions(),
                eos=self.inputs.eos,
                force=self._force_report,
            )
            self._force_report = False
            if self.inputs.done:
                break
            self._maybe_checkpoint()
            await self.outputs.wait_window()
            taken += 1
            if taken % YIELD_EVERY == 0:
                # a get() from a non-empty queue never yields: let heartbeats, acks and
                # signals run while a backlog is worked off
                await asyncio.sleep(0)
        if gather is not None and gather.records:
            await self._run_gathered()
            self.op.flush()

    async def _take(self, msg: MqttMessage) -> list[asyncio.Future[None]] | None:
        """Hand what ``msg`` carries to the operator; futures the ack must also wait for."""
        binding = self.bindings.get(msg.topic)
        receiver = self.receivers.get(msg.topic)
        if receiver is not None and is_chunk(msg.payload):
            try:
                header, data = decode_chunk(msg.payload)
            except BadDataMessage as e:
                log.warning("task %s: dropping bad chunk on %s: %s", self.task, msg.topic, e)
                return []
            if self._unassigned(header.producer, header.generation, msg):
                return None
            if header.producer != receiver.producer or self._stale(header.producer, header.generation, msg):
                return []
            record = await asyncio.to_thread(receiver.on_chunk, header, data)
            if record is None:
                return []
            self.inputs.hwm[header.producer] = header.seq
            return await self._deliver([record], batch_edge=False, files=[record["path"]])
        try:
            decoded = decode(msg.payload)
        except BadDataMessage as e:
            log.warning("task %s: dropping bad message on %s: %s", self.task, msg.topic, e)
            return []
        if self._unassigned(decoded.producer, decoded.generation, msg):
            return None
        if self._stale(decoded.producer, decoded.generation, msg):
            return []
        try:
            records = self.inputs.fresh(decoded)
        except Gap as gap:
            first = decoded.records[0][0] if decoded.records else (decoded.skip_from or 0)
            self._hold(decoded.producer, first, msg, gap)
            return []
        if decoded.eos and self.inputs.eos.get(decoded.producer, 0) > self.inputs.hwm.get(
            decoded.producer, 0
        ):
            # the end of stream came before the last records: wait for them, then ask
            self._held_since.setdefault(decoded.producer, asyncio.get_running_loop().time())
        if not records:
            # a resend of what we have, or a skip over what the producer's spool dropped: say so
            self._force_report = bool(decoded.records) or decoded.skip_from is not None
            if decoded.skip_from is not None:
                await self._release_held(decoded.producer)  # what waited behind the gap
            return []
        batch_edge = binding is not None and binding.model is EdgeModel.batch
        traced = msg.user_properties.get(TRACEPARENT) if self.records_tracer is not None else None
        if traced is not None and self.records_tracer is not None:  # a sampled record's trace goes on
            with self.records_tracer.hop(traced, decoded.producer, len(records)):
                futs = await self._deliver(records, batch_edge=batch_edge, files=[])
        else:
            futs = await self._deliver(records, batch_edge=batch_edge, files=[])
        await self._release_held(decoded.producer)
        return futs

    def _unassigned(self, producer: str, generation: int, msg: MqttMessage) -> bool:
        """A generation the master has not assigned yet: the message waits for it."""
        assigned = self.assigned.get(producer)
        if assigned is None or generation <= assigned:
            return False
        waiting = self.early.setdefault(producer, [])
        if not waiting:
            log.info(
                "task %s: %s generation %d is not assigned yet (%d is); its messages wait",
                self.task,
                producer,
                generation,
                assigned,
            )
        waiting.append(msg)
        return True

    def assign(self, inputs: list[Binding]) -> None:
        """The master's current producer generations (a producer moved): what waited for one
        of them is taken now."""
        for b in inputs:
            if b.generation is None or b.generation <= self.assigned.get(b.peer, -1):
                continue
            self.assigned[b.peer] = b.generation
            waiting = self.early.pop(b.peer, [])
            keep = [m for m in waiting if self._generation_of(m) > b.generation]
            if keep:
                self.early[b.peer] = keep
            for m in waiting:
                if m not in keep:
                    self.queue.put_nowait(m)

    @staticmethod
    def _generation_of(msg: MqttMessage) -> int:
        try:
            if is_chunk(msg.payload):
                return decode_chunk(msg.payload)[0].generation
            return decode(msg.payload).generation
        except BadDataMessage:
            return -1

    def _stale(self, producer: str, generation: int, msg: MqttMessage) -> bool:
        """A message from an older copy of its producer than one already heard (a copy cut
        off, then replaced elsewhere): dropped, and acknowledged like any other."""
        newest = self.generations.get(producer)
        if newest is None or generation > newest:
            self.generations[producer] = generation
            return False
        if generation == newest:
            return False
        self.stale += 1
        log.debug(
            "task %s: dropping a message of %s generation %d on %s (generation %d runs)",
            self.task,
            producer,
            generation,
            msg.topic,
            newest,
        )
        return True

    # ------------------------------------------------------------------ checkpoints

    def _maybe_checkpoint(self) -> None:
        """Between two messages: checkpoint if one is due and the snapshot is consistent
        (records gathered for a batch are taken but not yet processed: not now)."""
        ck = self.checkpoints
        if ck is not None and ck.due() and (self.gather is None or not self.gather.records):
            ck.take()

    def on_checkpointed(self, snap: TaskSnapshot) -> None:
        """A checkpoint is at the broker: producers may now drop what it covers."""
        if self.progress.gate is None:
            return  # finished or drained: everything is reported already
        self.progress.gate = dict(snap.hwm)
        self.progress.flush_due(self.inputs.hwm, self._file_positions(), self.inputs.eos)

    def ungate(self) -> None:
        """Report everything from now on (a drain for a move: its snapshot is complete)."""
        if self.progress.gate is not None:
            self.progress.gate = None
            self.progress.flush_due(self.inputs.hwm, self._file_positions(), self.inputs.eos)

    # ------------------------------------------------------------------ reordering

    def _hold(self, producer: str, first: int, msg: MqttMessage, gap: Gap) -> None:
        """Keep a message that came ahead of its turn until the records before it arrive.

        It is acknowledged at once: an unacknowledged backlog would stop the broker from
        delivering what fills the gap (its receive maximum), and the producer keeps the
        message until our progress covers it, so a crash of this copy loses nothing.
        """
        held = self.held.setdefault(producer, [])
        if not any(f == first for f, _ in held):
            held.append((first, msg))
            held.sort(key=lambda x: x[0])
        self._held_since.setdefault(producer, asyncio.get_running_loop().time())
        if len(held) > MAX_HELD:
            held.pop()  # the newest goes; the resend brings it again
            self._ask_again(msg.topic, producer, gap.expected, f"{gap}; too many messages out of order")

    async def _release_held(self, producer: str) -> None:
        """Process held messages whose turn has come (iteratively: a replay after a failover
        may release thousands, and taking each must not recurse into this)."""
        if producer in self._releasing:
            return  # the call further up the stack goes on with the next one
        self._releasing.add(producer)
        try:
            held = self.held.get(producer)
            while held and held[0][0] <= self.inputs.hwm.get(producer, 0) + 1:
                _, msg = held.pop(0)
                await self._take(msg)  # outputs are tracked by the next acknowledgement's flush
        finally:
            self._releasing.discard(producer)
        if not held:
            self.held.pop(producer, None)
            if self.inputs.eos.get(producer, 0) <= self.inputs.hwm.get(producer, 0):
                self._held_since.pop(producer, None)
        else:
            self._held_since[producer] = asyncio.get_running_loop().time()

    def _check_held(self) -> None:
        """Ask for records that a held message has waited for too long."""
        now = asyncio.get_running_loop().time()
        for producer, since in list(self._held_since.items()):
            if now - since >= HOLD_SECONDS:
                expected = self.inputs.hwm.get(producer, 0) + 1
                topic = next(t for t, b in self.bindings.items() if b.peer == producer)
                self._ask_again(topic, producer, expected, f"records from {expected} of {producer} missing")
                self._held_since[producer] = now

    async def _deliver(
        self, records: list[Record], *, batch_edge: bool, files: list[str]
    ) -> list[asyncio.Future[None]]:
        self.records_in += len(records)
        op, out = self.op, self.outputs
        if self.gather is not None and not batch_edge:
            done = self.gather.add(records, files)
            if self.gather.full:
                await self._run_gathered()
            return [done]
        try:
            if batch_edge or self.gather is not None:
                out.emit_all(await call(op.process_batch(records)))
            else:
                process = op.process
                mqtt = self.mqtt
                for record in records:
                    result = process(record)
                    if inspect.isawaitable(result):
                        result = await result
                    if result is not None:
                        for r in result:
                            out.emit(r)
                    if mqtt.window_full:  # one delivery may fan out into many messages
                        await mqtt.wait_for_window()
        finally:
            _remove(files)
        return []

    async def _run_gathered(self) -> None:
        assert self.gather is not None
        records, files, done = self.gather.take()
        try:
            if records:
                self.outputs.emit_all(await call(self.op.process_batch(records)))
        finally:
            _remove(files)
        if done is not None:
            pending = self.outputs.flush()
            if pending:
                waiter = asyncio.gather(*pending)
                waiter.add_done_callback(lambda f: _settle(f, done))
            else:
                done.set_result(None)

    def _ask_again(self, topic: str, producer: str, seq: int, why: str) -> None:
        """Ask ``producer`` to send everything from ``seq`` again (at most once a second per seq)."""
        self.gaps += 1
        now = asyncio.get_running_loop().time()
        asked, at = self._asked.get(producer, (0, 0.0))
        if asked == seq and now - at < RESEND_INTERVAL:
            return
        self._asked[producer] = (seq, now)
        log.warning("task %s: %s; asking %s to send again from %d", self.task, why, producer, seq)
        req = ResendRequest(consumer=self.task, producer=producer, seq=seq, reason=why)
        self.mqtt.publish(self._resend_topic[producer], req.to_bytes(), qos=1)

    def request_stop(self) -> None:
        """Stop taking input after the message in hand (a move)."""
        self.stopping = True
        self.queue.put_nowait(None)

    async def settle(self) -> None:
        """After a stop: process what was gathered (its input counts as taken) and flush."""
        if self.gather is not None and self.gather.records:
            await self._run_gathered()
        self.op.flush()

    def _file_positions(self) -> dict[str, tuple[int, int]]:
        return {r.producer: r.position for r in self.receivers.values()}

    def close(self) -> None:
        for r in self.receivers.values():
            r.close()


def _settle(src: asyncio.Future[Any], dst: asyncio.Future[None]) -> None:
    if dst.done():
        return
    if src.cancelled() or src.exception() is not None:
        dst.set_exception(src.exception() or asyncio.CancelledError())
        dst.exception()
    else:
        dst.set_result(None)


def _remove(paths: list[str]) -> None:
    """Delete received files the operator left in place (it may have moved them away)."""
    for p in paths:
        with contextlib.suppress(FileNotFoundError):
            Path(p).unlink()
