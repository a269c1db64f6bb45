"""Registry errors."""

from __future__ import annotations

from echo_shared.errors import NotFoundError, PermanentError


class UnknownDevice(NotFoundError):
    def __init__(self, device: str) -> None:
        super().__init__("device", device)


class BadDeviceMessage(PermanentError):
    """A message on a device topic could not be parsed (it is logged and dropped)."""


class DeviceRevoked(PermanentError):
    """A revoked device's registration (it is refused; the device stays revoked)."""

    def __init__(self, device: str) -> None:
        super().__init__(f"device {device} is revoked")
        self.device = device
