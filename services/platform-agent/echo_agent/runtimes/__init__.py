"""Runtimes: how operators run on a device beyond in-process built-ins.

- ``python``: user operators named ``python:package.module:Class`` (``python_runtime``);
- ``process``: an external command, any language (``process_runtime``), confined by
  ``sandbox`` (an unprivileged user, resource limits, a minimal environment);
- ``onnx``: model inference with ONNX Runtime (``onnx_runtime``);
- ``container``: a container image through the Docker engine (``container_runtime``).

Each runtime module exports ``OPERATORS`` (catalogue name -> implementation) and
``available() -> str | None`` (None when usable on this device, else why not). Which of
them a device offers is ``gating``'s business: ``python`` always and ``onnx`` when usable;
``process`` and ``container`` only when enabled with ``--runtime`` (and usable). The agent
declares what it offers when it registers, placement honours it, and the agent refuses a
deploy of any other.
"""

from __future__ import annotations

from types import ModuleType

from . import container_runtime, onnx_runtime, process_runtime, python_runtime
from .gating import DEFAULTS, KNOWN, OPT_IN, RuntimePolicy, RuntimeRefused, policy_of
from .sandbox import Sandbox

RUNTIMES: dict[str, ModuleType] = {
    "python": python_runtime,
    "process": process_runtime,
    "onnx": onnx_runtime,
    "container": container_runtime,
}


def detect() -> dict[str, str | None]:
    """Every runtime with None (usable here) or the reason it is not (enabled or not)."""
    return {name: module.available() for name, module in RUNTIMES.items()}


__all__ = [
    "DEFAULTS",
    "KNOWN",
    "OPT_IN",
    "RUNTIMES",
    "RuntimePolicy",
    "RuntimeRefused",
    "Sandbox",
    "detect",
    "policy_of",
]
