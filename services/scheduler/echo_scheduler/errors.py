"""Scheduler errors (placement failures are ``echo_shared.errors.PlacementError``)."""

from __future__ import annotations

from echo_shared.errors import PlacementError, RetryableError


class RegistryUnavailable(RetryableError):
    """The device list could not be fetched from the registry."""


class RouteError(PlacementError):
    """An edge cannot be connected: no broker serves both ends and no device can relay.

    ``edge`` is the index of the edge in ``spec.edges``; ``pinned`` is true when the edge's
    ends could not be anywhere else (every device they may run on was tried), so the spec
    itself cannot be connected with the current devices (the validator reports it as a 422).
    """

    def __init__(self, message: str, *, edge: int, pinned: bool = False) -> None:
        super().__init__(message)
        self.edge = edge
        self.pinned = pinned

    @property
    def loc(self) -> str:
        return f"edges[{self.edge}]"


__all__ = ["PlacementError", "RegistryUnavailable", "RouteError"]
