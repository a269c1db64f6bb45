"""What the device should run, kept on its disk: an agent restarted while cut off from the
master resumes its tasks from here.

Per task, under ``<data dir>/.tasks/<dataflow>/<task>/`` (files 0600, written atomically):

- ``desired.json``: the ``DeployTask`` the master sent (saved once the task runs, removed
  when the master stops, moves or fences it, or it finishes);
- ``checkpoint.json``: the task's latest ``TaskCheckpoint`` (every committed checkpoint,
  and while its broker is out of reach the local-only ones; see ``checkpoints``);
- ``checkpoint.delta.json``: the latest incremental one, the changes since
  ``checkpoint.json`` (``echo_shared.statedelta``), composed with it when loaded.

At start the agent deploys every desired task again, restored from its checkpoint when
there is one of the same generation. The generation fences it as any deploy is: when the
master is back, a deploy of the same generation finds it running, a newer one replaces
it, and a stop or fence removes it here.
"""

from __future__ import annotations

import logging
import re
import shutil
from pathlib import Path

from pydantic import ValidationError

from echo_shared import statedelta, stateslices
from echo_shared.messages import DeployTask, TaskCheckpoint, TaskSnapshot, state_bytes, state_pieces
from echo_shared.secretfiles import write_secret

log = logging.getLogger(__name__)
DELTA_FILE = "checkpoint.delta.json"
HEAD_BYTES = 4096  # where a kept checkpoint names its generation


class LocalTasks:
    def __init__(self, directory: Path | None) -> None:
        self.directory = directory  # None: nothing is kept (tools, tests)

    def _dir(self, dataflow: str, task: str) -> Path:
        assert self.directory is not None
        return self.directory / dataflow / task

    def save(self, cmd: DeployTask, state: list[bytes] | None = None) -> None:
        """Keep the command that runs a task (``state``: its restore's state as JSON pieces,
        written in slices beforehand: a large one)."""
        if self.directory is None:
            return
        d = self._dir(cmd.dataflow, cmd.task)
        try:
            write_secret(
                d / "desired.json", state_pieces(cmd, state) if state is not None else state_bytes(cmd)
            )
            ckpt = d / "checkpoint.json"
            if ckpt.exists() and _generation(ckpt) != cmd.generation:
                ckpt.unlink()  # an earlier copy's: this one starts from the command's restore
                (d / DELTA_FILE).unlink(missing_ok=True)
        except OSError as e:
            log.warning("task %s/%s: not kept on disk: %s", cmd.dataflow, cmd.task, e)

    def checkpoint(
        self, dataflow: str, task: str, payload: bytes | list[bytes], sync: bool = True, delta: bool = False
    ) -> None:
        """Keep a task's ``TaskCheckpoint`` (raises ``OSError``). ``sync``: on disk before
        returning (a local-only checkpoint, taken while cut off); else atomic but written out
        by the kernel (the broker and the master have this one; after a power cut the one
        before it is as consistent). ``delta``: an incremental one, kept beside the whole
        one it builds on."""
        if self.directory is None:
            return
        d = self._dir(dataflow, task)
        if delta:
            write_secret(d / DELTA_FILE, payload, fsync=sync)
            return
        write_secret(d / "checkpoint.json", payload, fsync=sync)
        (d / DELTA_FILE).unlink(missing_ok=True)

    def forget(self, dataflow: str, task: str) -> None:
        if self.directory is None:
            return
        shutil.rmtree(self._dir(dataflow, task), ignore_errors=True)
        parent = self.directory / dataflow
        if parent.is_dir() and not any(parent.iterdir()):
            parent.rmdir()

    def load(self) -> list[DeployTask]:
        """The desired tasks, each restored from its local checkpoint when it has one."""
        if self.directory is None or not self.directory.is_dir():
            return []
        out = []
        for desired in sorted(self.directory.glob("*/*/desired.json")):
            try:
                cmd = DeployTask.model_validate_json(desired.read_bytes())
            except (OSError, ValidationError) as e:
                log.warning("ignoring %s: %s", desired, e)
                continue
            ckpt_path = desired.with_name("checkpoint.json")
            if ckpt_path.exists():
                try:
                    ckpt = TaskCheckpoint.model_validate_json(ckpt_path.read_bytes())
                except (OSError, ValidationError) as e:
                    log.warning("ignoring %s: %s", ckpt_path, e)
                else:
                    if ckpt.generation == cmd.generation:
                        cmd = cmd.model_copy(
                            update={"restore": _with_delta(ckpt, desired.with_name(DELTA_FILE))}
                        )
            out.append(cmd)
        return out


def _with_delta(whole: TaskCheckpoint, path: Path) -> TaskSnapshot:
    """The latest checkpoint: ``whole``, or the incremental one at ``path`` composed with it."""
    if not path.exists():
        return whole.snapshot
    try:
        ckpt = TaskCheckpoint.model_validate_json(path.read_bytes())
        state = ckpt.snapshot.state
        if not statedelta.is_changes(state) or ckpt.generation != whole.generation:
            raise ValueError("not the changes of this copy")
        if state[statedelta.SINCE] != whole.snapshot.taken_at:
            raise ValueError("the changes since another checkpoint")
        composed = statedelta.apply(stateslices.assemble(whole.snapshot.state), state[statedelta.DELTA])
    except (OSError, ValueError) as e:  # ValidationError is a ValueError
        log.warning("ignoring %s: %s", path, e)
        return whole.snapshot
    return ckpt.snapshot.model_copy(update={"state": composed})


def _generation(path: Path) -> int | None:
    """The generation a kept checkpoint names, read from its head (the state after it may
    be a GB: not parsed for this)."""
    try:
        with path.open("rb") as f:
            head = f.read(HEAD_BYTES)
    except OSError:
        return None
    found = re.search(rb'"generation":(-?\d+)', head)
    return int(found.group(1)) if found else None
