"""Periodic checkpoints of a running task: what failover restores.

Every ``interval`` seconds (and, for a task with inputs, every ``every`` records, so gated
progress never costs a producer its credit window) the task's loop calls ``take()``
between two records, when the snapshot is consistent: the operator's state after every
record up to ``hwm`` and nothing after it, and ``out_seq`` the last record it emitted.
The checkpoint is serialised at once (the operator's state keeps changing), then a
background task waits until every output emitted up to ``out_seq`` is acknowledged by the
broker, so a copy restored from it loses nothing emitted before it, and publishes it.
Once the master has *kept* the checkpoint (its ``CheckpointStored`` notice, ``stored``; the
broker's acknowledgement is not enough: a failover restores the latest checkpoint the
master kept, and one it dropped or had not stored yet would leave records nobody holds),
``on_published`` runs: a consumer then reports its progress up to the checkpoint's hwm
(``Progress.gate``), never beyond, so its producers keep everything after it for a copy
restored from it. The wait also paces checkpoints to what the master can store.

Each committed checkpoint is also kept on the device (``save_local``: the agent's
``LocalTasks``), so an agent restarted while cut off resumes its tasks from it. While a
channel's broker is out of reach (its outputs go to the spool, ``Outputs.spooling``) a
checkpoint is local only: open batches are closed into the spool, the spools are synced,
and the checkpoint is saved at once (every output up to it is safe on disk); the master
gets the next one taken after the link is back.

At most one checkpoint is in flight per task; one is skipped when nothing moved since
the previous one.

For an operator that tracks changes to its state (``epoch``), each checkpoint's epoch is
remembered by the time it was taken: a move whose target holds that checkpoint's state
asks for the changes since it (``epoch_of``). Checkpoints of such an operator are
incremental once the master kept a whole one as an object of its own (its state is large:
``CheckpointStored.base``): each then sends only the changes since that whole one
(``statedelta.changes``), and a whole one goes again after ``FULL_EVERY`` seconds, or when
the changes grow past ``DELTA_MAX_SHARE`` of it. The master keeps a delta only on top of
the whole checkpoint it names; otherwise it says so (``CheckpointStored.kept`` false) and
the next checkpoint is whole. While cut off, checkpoints are whole.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from echo_shared import statedelta, stateslices
from echo_shared.messages import TaskCheckpoint, TaskSnapshot, state_bytes, state_pieces

from .channels import Outputs
from .intake import Inputs

log = logging.getLogger(__name__)

EPOCHS_KEPT = 4096  # checkpoints whose operator epoch is remembered, at most ...
EPOCHS_SECONDS = 180.0  # ... and for this long (a move stages a checkpoint taken seconds ago)
FULL_EVERY = 30.0  # seconds: a whole checkpoint at least this often
DELTA_MAX_SHARE = 0.125  # ... and once the changes since the last whole one are this share of it
COMMIT_TIMEOUT = 10.0  # seconds to wait for the outputs' and the checkpoint's acknowledgements
STORE_TIMEOUT = 10.0  # seconds to wait for the master to say it kept the checkpoint
# ... both longer for a large checkpoint: a second more per this many bytes (1 GB goes
# through the broker and into the object store in ~10 s on a small machine)
TIMEOUT_BYTES_PER_S = 25_000_000


def take_snapshot(out: Outputs, inputs: Inputs | None, state: Any) -> TaskSnapshot:
    """Where the task stands: last seq emitted, last seq taken per producer, operator state."""
    return TaskSnapshot(
        out_seq=out.seq,
        hwm=dict(inputs.hwm) if inputs else {},
        eos=dict(inputs.eos) if inputs else {},
        state=state,
        taken_at=time.time(),
    )


Payload = bytes | list[bytes]  # a checkpoint's JSON, or (a large state) its pieces
Publish = Callable[[Payload], object]  # returns a future (or awaitable) resolved on the PUBACK
SaveLocal = Callable[[Payload, bool, bool], None]  # (payload, sync, is a delta)


@dataclass(frozen=True)
class _Whole:
    """The latest whole checkpoint the master kept, which incremental ones build on."""

    taken_at: float
    epoch: int
    size: int  # its payload's bytes
    at: float  # monotonic, when taken


class CheckpointRefused(Exception):
    """The master did not keep a checkpoint (an incremental one whose base it does not have)."""


class Checkpoints:
    def __init__(
        self,
        *,
        interval: float,
        publish: Publish,
        device: str,
        dataflow: str,
        task: str,
        generation: int,
        outputs: Outputs,
        inputs: Inputs | None,
        snapshot: Callable[[], Any],
        every: int | None = None,
        restored: TaskSnapshot | None = None,
        on_published: Callable[[TaskSnapshot], None] | None = None,
        save_local: SaveLocal | None = None,
        epoch: Callable[[], int | None] | None = None,
        delta: Callable[[int], Any] | None = None,
    ) -> None:
        self._save_local = save_local
        self._epoch = epoch
        self._delta = delta  # the operator's changes since an epoch (None: always whole)
        self._whole: _Whole | None = None
        self.deltas = 0  # incremental checkpoints committed
        self._epochs: dict[float, int] = {}  # taken_at -> the operator's epoch begun by it
        self.saved_local = 0
        self.interval = interval
        self._publish = publish
        self.device, self.dataflow, self.task, self.generation = device, dataflow, task, generation
        self.outputs = outputs
        self.inputs = inputs
        self._snapshot = snapshot
        self.every = every
        self.on_published = on_published
        self.published: TaskSnapshot | None = restored  # the latest the master has
        self.taken = 0
        self.committed = 0
        self.failed = 0
        self._inflight: asyncio.Task[None] | None = None
        self._awaiting: tuple[float, asyncio.Future[bool]] | None = None  # (taken_at, kept: base?)
        # where the task starts (fresh, or restored) needs no checkpoint
        self._last_mark: tuple[int, int, int] | None = self._mark()
        self._next_at = time.monotonic() + interval
        self._closed = False

    def _mark(self) -> tuple[int, int, int]:
        inputs = self.inputs
        if inputs is None:
            return (self.outputs.seq, 0, 0)
        return (self.outputs.seq, sum(inputs.hwm.values()), sum(inputs.eos.values()))

    @property
    def busy(self) -> bool:
        return self._inflight is not None and not self._inflight.done()

    def due(self) -> bool:
        """A checkpoint should be taken now (the caller checks the snapshot is consistent)."""
        if self._closed or self.busy:
            return False
        mark = self._mark()
        if mark == self._last_mark:
            return False
        if time.monotonic() >= self._next_at:
            return True
        last = self._last_mark or (0, 0, 0)
        return self.every is not None and mark[1] - last[1] >= self.every

    def wait_time(self) -> float | None:
        """Seconds until a checkpoint falls due (None: nothing to checkpoint), for an idle loop."""
        if self._closed or self._mark() == self._last_mark:
            return None
        if self.busy:
            return 0.05
        return max(0.0, self._next_at - time.monotonic())

    def take(self) -> None:
        """Snapshot now (between two records) and commit it in the background."""
        local_only = self.outputs.spooling
        if local_only:
            self.outputs.close_batches()  # into the spool: every output up to out_seq is there
        snap = take_snapshot(self.outputs, self.inputs, self._snapshot())
        epoch = self._epoch() if self._epoch is not None else None
        if epoch is not None:
            self._epochs[snap.taken_at] = epoch
            while (
                len(self._epochs) > EPOCHS_KEPT or next(iter(self._epochs)) < snap.taken_at - EPOCHS_SECONDS
            ):
                del self._epochs[next(iter(self._epochs))]
        # now, not later: the operator's state keeps changing
        base = None if local_only else self._whole
        payload: Payload | None = self._incremental(snap, base) if base is not None else None
        large: dict[str, Any] | None = None
        if payload is None:
            base = None
            if stateslices.wants_slices(snap.state):
                # written in slices by the commit, the loop running between them (1 GB at
                # once: seconds, in which the agent misses its keepalive); from a copy
                large = stateslices.detach(snap.state)
            else:
                payload = self._payload(snap)
        wants_whole = base is None and epoch is not None and self._delta is not None
        snap = TaskSnapshot(out_seq=snap.out_seq, hwm=snap.hwm, eos=snap.eos, taken_at=snap.taken_at)
        self.taken += 1
        self._last_mark = self._mark()
        self._next_at = time.monotonic() + self.interval
        if local_only:
            self.outputs.sync_spools()
            if large is not None:
                payload = state_pieces(self._message(snap), [stateslices.dump_now(large)])
            assert payload is not None
            self._keep_local(payload, sync=True, delta=False)
            self._whole = None  # the local copy is this one now: the next goes whole
            return
        whole = (epoch, time.monotonic()) if wants_whole and epoch is not None else None
        self._inflight = asyncio.create_task(
            self._commit(
                payload, snap, self.outputs.unsafe(), delta=base is not None, whole=whole, large=large
            ),
            name=f"checkpoint-{self.task}",
        )

    def _message(self, snap: TaskSnapshot) -> TaskCheckpoint:
        return TaskCheckpoint(
            device=self.device,
            dataflow=self.dataflow,
            task=self.task,
            generation=self.generation,
            snapshot=snap,
            ts=snap.taken_at,
        )

    def _payload(self, snap: TaskSnapshot) -> bytes:
        return state_bytes(self._message(snap))

    def _incremental(self, snap: TaskSnapshot, base: _Whole) -> bytes | None:
        """The checkpoint as the changes since ``base``; None when a whole one is due."""
        if self._delta is None or time.monotonic() - base.at >= FULL_EVERY:
            return None
        try:
            changes = self._delta(base.epoch)
        except Exception as e:  # whole, then
            log.info("task %s/%s: no incremental checkpoint (%s)", self.dataflow, self.task, e)
            return None
        state = statedelta.changes(changes, base.taken_at)
        payload = self._payload(snap.model_copy(update={"state": state}))
        return payload if len(payload) <= base.size * DELTA_MAX_SHARE else None

    async def _commit(
        self,
        payload: Payload | None,
        snap: TaskSnapshot,
        unsafe: list[asyncio.Future[None]],
        *,
        delta: bool = False,
        whole: tuple[int, float] | None = None,
        large: dict[str, Any] | None = None,
    ) -> None:
        """Publish the checkpoint (``large``: a state to write in slices first, into
        ``payload``) once the outputs before it are safe; committed once the master kept it.
        ``whole``: (epoch, when) of a whole one incremental ones may then build on.
        Cancelled (the task stops or drains), it stops publishing: a large checkpoint's
        remaining parts would only delay the drain's snapshot behind them."""
        ack: asyncio.Future[Any] | None = None
        try:
            if large is not None:
                payload = state_pieces(self._message(snap), await stateslices.dump_pieces(large))
                del large
            assert payload is not None
            size = len(payload) if isinstance(payload, bytes) else sum(map(len, payload))
            if unsafe:  # asyncio.wait, not gather: the acks wait for the same futures
                done, pending = await asyncio.wait(unsafe, timeout=COMMIT_TIMEOUT)
                if pending or any(f.cancelled() or f.exception() is not None for f in done):
                    raise OSError("outputs not acknowledged by the broker")
            if self._save_local is not None and not self._closed:  # off the loop: file I/O
                await asyncio.to_thread(self._keep_local, payload, sync=False, delta=delta)
            kept: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
            self._awaiting = (snap.taken_at, kept)  # before publishing: the notice may come first
            fut = self._publish(payload)
            if inspect.isawaitable(fut):
                ack = asyncio.ensure_future(fut)
                done, _ = await asyncio.wait({ack}, timeout=COMMIT_TIMEOUT + size / TIMEOUT_BYTES_PER_S)
                if not done:
                    raise TimeoutError("checkpoint not acknowledged by the broker")
                ack.result()
            try:
                store_s = STORE_TIMEOUT + size / TIMEOUT_BYTES_PER_S
                base_of_deltas = await asyncio.wait_for(asyncio.shield(kept), store_s)
            except TimeoutError:
                raise TimeoutError(
                    f"the master did not say it kept the checkpoint within {store_s:.0f}s"
                ) from None
        except asyncio.CancelledError:
            if ack is not None and not ack.done():
                ack.cancel()
            raise
        except Exception as e:
            self.failed += 1
            self._last_mark = None  # try again at the next opportunity
            self._whole = None  # whole, next time: the local copy and the master's agree again
            log.info("task %s/%s: checkpoint not committed: %s", self.dataflow, self.task, e)
            return
        finally:
            self._awaiting = None
        self.committed += 1
        if delta:
            self.deltas += 1
        else:
            # incremental ones build on it, if the master keeps it so (a large state)
            self._whole = (
                _Whole(snap.taken_at, whole[0], size, whole[1]) if base_of_deltas and whole else None
            )
        if self._closed:
            return
        self.published = snap
        log.debug(
            "task %s/%s: checkpoint at out %d, hwm %s", self.dataflow, self.task, snap.out_seq, snap.hwm
        )
        if self.on_published is not None:
            self.on_published(snap)

    def epoch_of(self, taken_at: float) -> int | None:
        """The operator's epoch begun by the checkpoint taken at ``taken_at`` (None: unknown)."""
        return self._epochs.get(taken_at)

    def stored(self, taken_at: float, kept: bool = True, base: bool = False) -> None:
        """The master kept (or, ``kept`` false, refused) the checkpoint taken at ``taken_at``
        (``CheckpointStored``); ``base``: kept as an object incremental ones may build on."""
        waiting = self._awaiting
        if waiting is not None and waiting[0] == taken_at and not waiting[1].done():
            if kept:
                waiting[1].set_result(base)
            else:
                waiting[1].set_exception(CheckpointRefused("the master did not keep it"))

    def _keep_local(self, payload: Payload, *, sync: bool, delta: bool) -> None:
        if self._save_local is None or self._closed:
            return
        try:
            self._save_local(payload, sync, delta)
            self.saved_local += 1
        except OSError as e:
            log.warning("task %s/%s: local checkpoint not saved: %s", self.dataflow, self.task, e)

    async def close(self) -> None:
        """Stop checkpointing (idempotent): what is in flight is abandoned."""
        self._closed = True
        task, self._inflight = self._inflight, None
        if task is not None and not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
