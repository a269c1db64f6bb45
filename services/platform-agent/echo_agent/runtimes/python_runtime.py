"""The Python runtime: user operators given as ``python:package.module:Class``.

The module must be importable on the device (installed, or on ``PYTHONPATH``). The class
implements the operator API (``echo_agent.operators.base``: checked on the class before it
is instantiated); if it has a ``Config`` pydantic model, the task's config is validated with
it, otherwise the class gets the dict. What a device trusts is the code installed on it,
which the deployer can only name.

Where it runs: by default in a worker process of its own per task (``workers``: this
module's ``load`` runs there, and the agent keeps a proxy), as the agent's user but with a
minimal environment, so one that spins, blocks or crashes fails its task and never stalls
the agent. ``ECHO_PYTHON_WORKERS=0`` loads it here, inside the agent's event loop.
"""

from __future__ import annotations

import importlib
from typing import Any

from pydantic import BaseModel

from ..operators.base import Operator

OPERATORS: dict[str, type[Operator]] = {}


class OperatorLoadError(LookupError):
    pass


def available() -> str | None:
    return None


def load(name: str, config: dict[str, Any]) -> Operator:
    target = name.removeprefix("python:")
    module_name, _, class_name = target.partition(":")
    try:
        module = importlib.import_module(module_name)
    except Exception as e:  # ImportError, or the module failing at import
        raise OperatorLoadError(f"cannot import {module_name}: {type(e).__name__}: {e}") from e
    cls = getattr(module, class_name, None)
    if not isinstance(cls, type):
        raise OperatorLoadError(f"{module_name} has no class {class_name}")
    # checked on the class, before it is called: a class that is no operator (say
    # subprocess.Popen, which a config could feed an argv) never runs
    for method in ("open", "process", "close"):
        if not callable(getattr(cls, method, None)):
            raise OperatorLoadError(f"{target} does not implement the operator API (no {method}())")
    cfg_model = getattr(cls, "Config", None)
    cfg: Any = config
    if isinstance(cfg_model, type) and issubclass(cfg_model, BaseModel):
        cfg = cfg_model.model_validate(config)
    return cls(cfg)  # type: ignore[no-any-return]
