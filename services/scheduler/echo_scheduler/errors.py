"""Scheduler errors (placement failures are ``echo_shared.errors.PlacementError``)."""

from __future__ import annotations

from echo_shared.errors import PlacementError, RetryableError


class RegistryUnavailable(RetryableError):
    """The device list could not be fetched from the registry."""


__all__ = ["PlacementError", "RegistryUnavailable"]
