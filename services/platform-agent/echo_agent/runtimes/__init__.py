"""Runtimes: how operators run on a device beyond in-process built-ins.

- ``python``: user operators named ``python:package.module:Class`` (``python_runtime``);
- ``process``: an external command, any language (``process_runtime``);
- ``onnx``: model inference with ONNX Runtime (``onnx_runtime``);
- ``container``: a container image through the Docker engine (``container_runtime``).

Each runtime module exports ``OPERATORS`` (catalogue name -> implementation) and
``available() -> str | None`` (None when usable on this device, else why not); the agent
declares the runtimes that are available when it registers, and placement honours them.
"""

from __future__ import annotations

from types import ModuleType

from . import container_runtime, onnx_runtime, process_runtime, python_runtime

RUNTIMES: dict[str, ModuleType] = {
    "python": python_runtime,
    "process": process_runtime,
    "onnx": onnx_runtime,
    "container": container_runtime,
}


def detect() -> dict[str, str | None]:
    """Every runtime with None (usable here) or the reason it is not."""
    return {name: module.available() for name, module in RUNTIMES.items()}
