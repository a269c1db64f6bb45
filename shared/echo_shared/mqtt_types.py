"""What ECHO's MQTT adapter (``mqtt``) hands out and takes, without paho: messages, wills,
errors, URLs. Kept apart so code that only reads these needs no MQTT client."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlparse

from .errors import BrokerUnavailable, EchoError


class MqttUnavailable(BrokerUnavailable):
    pass


class SessionTakenOver(EchoError):
    """Another client connected with our client id; this one must stop."""


class MqttRefused(MqttUnavailable):
    """The broker refused our credentials (bad login, revoked, not authorised)."""


REFUSED_LOGIN = {134, 135, 138}  # MQTT 5: bad user name or password, not authorized, banned


@dataclass(frozen=True)
class Will:
    topic: str
    payload: bytes
    qos: int = 1
    retain: bool = False


@dataclass
class MqttMessage:
    topic: str
    payload: bytes
    qos: int
    mid: int
    retain: bool
    dup: bool
    epoch: int
    user_properties: dict[str, str] = field(default_factory=dict)
    source: Any = None  # the client that delivered it (acks go back through it); None: this one
    more_mids: tuple[int, ...] = ()  # a message that came in parts: its other parts' packet ids
    # ... and, for a client that takes them so (``whole_payloads=False``), the parts
    # themselves, with ``payload`` empty: 1 GB joined is seconds of page faults
    chunks: tuple[bytes, ...] = ()

    def data(self) -> bytes:
        """The payload, joined from its parts if it came so."""
        return b"".join(self.chunks) if self.chunks else self.payload

    def pieces(self) -> list[bytes]:
        """The payload as it came: its parts, or one piece."""
        return list(self.chunks) if self.chunks else [self.payload]


MessageHandler = Callable[[MqttMessage], None]


def parse_url(url: str) -> tuple[str, int, bool]:
    u = urlparse(url)
    if u.scheme not in {"mqtt", "mqtts", "tcp"} or not u.hostname:
        raise ValueError(f"not an MQTT URL: {url!r} (expected mqtt://host:port)")
    tls = u.scheme == "mqtts"
    return u.hostname, u.port or (8883 if tls else 1883), tls
