"""Typed errors of the ETL and stats operators.

Raised in ``open()`` (a file named by the config is missing or unusable) or while
processing (a record the operator cannot handle); the task runner turns them into the
task's ``failed`` state with the message as the reason.
"""

from __future__ import annotations

from echo_shared.errors import PermanentError


class OperatorError(PermanentError):
    """An operator cannot go on; the message says why and where."""


class DeviceFileError(OperatorError):
    """A file named in an operator's config is missing or unusable on this device."""

    def __init__(self, option: str, path: str, device: str, problem: str) -> None:
        super().__init__(f"{option} {path!r} {problem} on device {device}")
        self.option = option
        self.path = path
        self.device = device
        self.problem = problem


class BadRecord(OperatorError):
    """An input record the operator cannot handle (e.g. a line that is not SenML)."""

    def __init__(self, operator: str, problem: str) -> None:
        super().__init__(f"{operator}: {problem}")
        self.operator = operator
        self.problem = problem
