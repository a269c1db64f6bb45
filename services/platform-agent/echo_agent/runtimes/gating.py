"""Which runtimes a device offers, and the refusal of operators of any other.

Safe by default:

- ``python`` (the built-ins and ``python:package.module:Class``) is always offered;
- ``onnx`` when ONNX Runtime imports;
- ``process`` and ``container`` run programs of the deployer's choosing, so they are off
  unless the device enables them: ``echo-agent --runtime process`` / ``--runtime
  container`` (``ECHO_RUNTIMES='["process"]'``); ``container`` also needs a Docker engine
  that answers.

``--runtime`` *enables*, on top of the defaults; it never disables one. Naming a default
(``python``, ``onnx``) is allowed and changes nothing, so a complete list such as
``["python", "process", "onnx"]`` means what it says. A runtime enabled but not usable here
(``container`` without an engine, ``onnx`` without ONNX Runtime) is not offered, and the
agent says why once at start.

What a device offers is what it advertises (``DeviceInfo.runtimes``, so placement puts a
task only where its runtime is), and, independently, what its agent accepts: a deploy of
an operator whose runtime the device does not offer (a forged command, or one raced with a
restart of the agent with other flags) is refused, its ack ``ok=false``, state ``failed``,
and a one-line reason such as ``runtime 'process' is not enabled on device edge-1 (start
echo-agent with --runtime process)``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from echo_shared.messages import DeployTask
from echo_shared.operators import PYTHON_PREFIX, lookup

from ..operators import Operator, build
from . import workers
from .container_runtime import Container
from .process_runtime import Process
from .sandbox import Sandbox

if TYPE_CHECKING:
    from ..settings import AgentSettings

log = logging.getLogger(__name__)

DEFAULTS = ("python", "onnx")  # offered whenever usable
OPT_IN = ("process", "container")  # offered only when enabled (and usable)
KNOWN = (*DEFAULTS, *OPT_IN)


class RuntimeRefused(PermissionError):
    """An operator whose runtime this device does not offer (the message is the reason)."""


def _usable(name: str) -> str | None:
    from . import RUNTIMES

    why: str | None = RUNTIMES[name].available()
    return why


@dataclass(frozen=True)
class RuntimePolicy:
    """What a device runs: the runtimes it offers, and how its external programs are confined."""

    device: str
    offered: tuple[str, ...]
    refused: dict[str, str] = field(default_factory=dict)  # runtime -> the reason (one line)
    sandbox: Sandbox | None = None  # None: the defaults, resolved when a program is built
    python_workers: bool = True  # user operators in worker processes (``workers``)

    @classmethod
    def decide(
        cls,
        device: str,
        enabled: Iterable[str] = (),
        *,
        sandbox: Sandbox | None = None,
        usable: Callable[[str], str | None] = _usable,
        python_workers: bool = True,
    ) -> RuntimePolicy:
        """The defaults plus ``enabled``, each if ``usable`` here (None, or why not)."""
        wanted = set(enabled)
        unknown = wanted - set(KNOWN)
        if unknown:
            raise ValueError(f"unknown runtimes {sorted(unknown)} (known: {', '.join(KNOWN)})")
        offered: list[str] = []
        refused: dict[str, str] = {}
        for name in KNOWN:
            if name in OPT_IN and name not in wanted:
                refused[name] = (
                    f"runtime {name!r} is not enabled on device {device} "
                    f"(start echo-agent with --runtime {name})"
                )
                continue
            why = usable(name)
            if why is None:
                offered.append(name)
            else:
                refused[name] = f"runtime {name!r} is not available on device {device}: {why}"
        return cls(device, tuple(sorted(offered)), refused, sandbox, python_workers)

    def announce(self, enabled: Iterable[str] = ()) -> None:
        """Say once what this device offers, and why an enabled runtime is not offered."""
        log.info("device %s offers the runtimes %s", self.device, ", ".join(self.offered))
        for name in dict.fromkeys(enabled):
            if name not in self.offered:
                log.warning("%s", self.refused.get(name, f"runtime {name!r} is not offered"))

    def runtime_of(self, operator: str) -> str | None:
        info = lookup(operator)
        return info.runtime if info is not None else None

    def refusal(self, operator: str) -> str | None:
        """Why this device refuses ``operator`` (None: it accepts it). An unknown operator
        is not refused here: building it fails with its own reason."""
        runtime = self.runtime_of(operator)
        if runtime is None or runtime in self.offered:
            return None
        return self.refused.get(runtime, f"runtime {runtime!r} is not offered by device {self.device}")

    def build(self, cmd: DeployTask) -> Operator:
        """The task's operator, if this device offers its runtime (else ``RuntimeRefused``),
        confined by the sandbox when it runs external programs, and held to the task's
        ``resources`` when it runs programs or containers."""
        why = self.refusal(cmd.operator)
        if why is not None:
            raise RuntimeRefused(why)
        if self.python_workers and cmd.operator.startswith(PYTHON_PREFIX):
            return workers.load(cmd.operator, cmd.config)
        if cmd.resources.worker:
            info = lookup(cmd.operator)
            if info is None or not info.can_run_in_worker:
                raise RuntimeRefused(f"{cmd.operator} cannot run in a worker process (resources.worker)")
            return workers.load(cmd.operator, cmd.config)
        op = build(cmd.operator, cmd.config)
        if isinstance(op, Process):
            op.confine(self.sandbox or Sandbox.default(), cmd.resources.memory_mb, cmd.resources.cpu)
        elif isinstance(op, Container):
            op.limit(cmd.resources.memory_mb, cmd.resources.cpu)
        return op


def policy_of(settings: AgentSettings) -> RuntimePolicy:
    """This agent's policy, from its settings (``runtimes``, ``run_as``, ``process_*``);
    says once what it offers, and who external programs run as when it offers ``process``."""
    sandbox = None
    if "process" in settings.runtimes:  # resolved (and said) only where programs may run
        sandbox = Sandbox.for_agent(
            settings.run_as,
            cpu_seconds=settings.process_cpu_seconds,
            lines_cpu_seconds=settings.process_lines_cpu_seconds,
            max_files=settings.process_max_files,
            cpu_window=settings.process_cpu_window,
            cgroups=settings.process_cgroups,
        )
    policy = RuntimePolicy.decide(
        settings.device_id, settings.runtimes, sandbox=sandbox, python_workers=settings.python_workers
    )
    policy.announce(settings.runtimes)
    return policy
