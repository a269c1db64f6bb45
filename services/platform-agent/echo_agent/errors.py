"""Agent errors."""

from __future__ import annotations

from echo_shared.errors import PermanentError


class StaleCommand(PermanentError):
    """A command for an older generation than the one this agent runs (fencing)."""


class BadCommand(PermanentError):
    """A control message that does not parse."""


class DuplicateDevice(PermanentError):
    """Another agent holds this device id (its control session)."""


class CredentialsRefused(PermanentError):
    """The broker refuses the device's login (revoked, or rotated away): the agent stops."""
