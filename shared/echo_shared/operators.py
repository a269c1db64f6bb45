"""Operator lookup and config validation over the catalogue (``echo_shared.catalogue``).

Operators are named ``family.name`` (built-ins) or ``python:package.module:Class`` (user
code, run by the agent's Python runtime; its config is the class's business).
"""

from __future__ import annotations

from typing import Any

from pydantic import ValidationError

from .catalogue import CATALOGUE, Kind, OperatorConfig, OperatorInfo, Role
from .catalogue.core import CountByKeyConfig, FileSinkConfig, GenerateConfig, PassthroughConfig
from .errors import Problem

PYTHON_PREFIX = "python:"


class PythonOperatorConfig(OperatorConfig):
    """User operators take any config; their class validates it on the device."""

    model_config = OperatorConfig.model_config | {"extra": "allow"}


def python_operator(name: str) -> OperatorInfo | None:
    """``python:package.module:Class`` -> an operator run by the Python runtime (any role)."""
    target = name[len(PYTHON_PREFIX) :]
    module, sep, cls = target.partition(":")
    if not sep or not module or not cls or not all(p.isidentifier() for p in (*module.split("."), cls)):
        return None
    return OperatorInfo(name, Role.any, PythonOperatorConfig, summary=f"user operator {target}")


def lookup(name: str) -> OperatorInfo | None:
    if name.startswith(PYTHON_PREFIX):
        return python_operator(name)
    return CATALOGUE.get(name)


def config_problems(info: OperatorInfo, config: dict[str, Any], where: str) -> list[Problem]:
    """Validate an operator config; each problem is located under ``where`` (``tasks[0].config``)."""
    try:
        info.config.model_validate(config)
    except ValidationError as e:
        return [
            Problem(loc=join_loc(where, err["loc"]), msg=err["msg"], type=err["type"]) for err in e.errors()
        ]
    return []


def join_loc(prefix: str, loc: tuple[int | str, ...] | list[int | str]) -> str:
    """``("tasks", 2, "operator")`` -> ``tasks[2].operator``, appended to ``prefix``."""
    out = prefix
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out


__all__ = [
    "CATALOGUE",
    "CountByKeyConfig",
    "FileSinkConfig",
    "GenerateConfig",
    "Kind",
    "OperatorConfig",
    "OperatorInfo",
    "PassthroughConfig",
    "Role",
    "config_problems",
    "join_loc",
    "lookup",
]
