"""What the device should run, kept on its disk: an agent restarted while cut off from the
master resumes its tasks from here.

Per task, under ``<data dir>/.tasks/<dataflow>/<task>/`` (files 0600, written atomically):

- ``desired.json``: the ``DeployTask`` the master sent (saved once the task runs, removed
  when the master stops, moves or fences it, or it finishes);
- ``checkpoint.json``: the task's latest ``TaskCheckpoint`` (every committed checkpoint,
  and while its broker is out of reach the local-only ones; see ``checkpoints``).

At start the agent deploys every desired task again, restored from its checkpoint when
there is one of the same generation. The generation fences it as any deploy is: when the
master is back, a deploy of the same generation finds it running, a newer one replaces
it, and a stop or fence removes it here.
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

from pydantic import ValidationError

from echo_shared.messages import DeployTask, TaskCheckpoint
from echo_shared.secretfiles import write_secret

log = logging.getLogger(__name__)


class LocalTasks:
    def __init__(self, directory: Path | None) -> None:
        self.directory = directory  # None: nothing is kept (tools, tests)

    def _dir(self, dataflow: str, task: str) -> Path:
        assert self.directory is not None
        return self.directory / dataflow / task

    def save(self, cmd: DeployTask) -> None:
        if self.directory is None:
            return
        d = self._dir(cmd.dataflow, cmd.task)
        try:
            write_secret(d / "desired.json", cmd.to_bytes())
            ckpt = d / "checkpoint.json"
            if ckpt.exists() and _generation(ckpt) != cmd.generation:
                ckpt.unlink()  # an earlier copy's: this one starts from the command's restore
        except OSError as e:
            log.warning("task %s/%s: not kept on disk: %s", cmd.dataflow, cmd.task, e)

    def checkpoint(self, dataflow: str, task: str, payload: bytes, sync: bool = True) -> None:
        """Keep a task's ``TaskCheckpoint`` (raises ``OSError``). ``sync``: on disk before
        returning (a local-only checkpoint, taken while cut off); else atomic but written out
        by the kernel (the broker and the master have this one; after a power cut the one
        before it is as consistent)."""
        if self.directory is not None:
            write_secret(self._dir(dataflow, task) / "checkpoint.json", payload, fsync=sync)

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
                        cmd = cmd.model_copy(update={"restore": ckpt.snapshot})
            out.append(cmd)
        return out


def _generation(path: Path) -> int | None:
    try:
        return TaskCheckpoint.model_validate_json(path.read_bytes()).generation
    except (OSError, ValidationError):
        return None
