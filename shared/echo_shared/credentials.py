"""Credentials: how one identity (a service or a device) reaches the brokers.

A credentials file is JSON, mode 0600 (``secretfiles``). A device's file is
``<state dir>/credentials.json``, written at enrolment (``echo-agent --enrol-token``)::

    {"device": "edge-1", "mqtt_url": "mqtts://broker:8883", "ca_file": "/var/lib/echo/ca.pem",
     "username": "echo.edge-1.3f9a", "password": "...",
     "nats_url": "tls://nats:4222", "nats_username": "...", "nats_password": "..."}

(``nats_*`` only for a device that reaches NATS). A service's file
(``ECHO_CREDENTIALS_FILE``, written by ``echoctl pki init``) has ``service`` instead of
``device`` plus ``redis_username`` / ``redis_password``; a service takes its broker URLs
from its settings (``ECHO_MQTT_URL``...) when the file has none.

``Access`` turns credentials plus URLs into what each client library wants: an
``ssl.SSLContext`` trusting the CA, and the logins. Passwords are ``SecretStr``: they
never show in a repr or a log line.
"""

from __future__ import annotations

import functools
import json
import ssl
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from pydantic import BaseModel, ConfigDict, SecretStr, ValidationError

from .secretfiles import SecretFileError, read_secret, write_secret

TLS_SCHEMES = {"mqtts", "tls", "rediss", "rediss+sentinel", "https", "wss"}


class Credentials(BaseModel):
    model_config = ConfigDict(extra="forbid")

    device: str | None = None
    service: str | None = None
    ca_file: Path | None = None
    mqtt_url: str | None = None
    username: str | None = None
    password: SecretStr | None = None
    nats_url: str | None = None
    nats_username: str | None = None
    nats_password: SecretStr | None = None
    redis_url: str | None = None
    redis_username: str | None = None
    redis_password: SecretStr | None = None
    nats_issuer_seed: SecretStr | None = None  # the master: signs devices' NATS logins (auth callout)
    nats_system_username: str | None = None  # the master: disconnects revoked devices' connections
    nats_system_password: SecretStr | None = None

    @classmethod
    def load(cls, path: Path) -> Credentials:
        """Read a credentials file (0600); relative ``ca_file`` paths are relative to it."""
        text = read_secret(path)
        try:
            creds = cls.model_validate(json.loads(text))
        except (ValueError, ValidationError) as e:
            raise SecretFileError(f"credentials file {path} is not valid: {e}") from e
        if creds.ca_file is not None and not creds.ca_file.is_absolute():
            creds = creds.model_copy(update={"ca_file": path.parent / creds.ca_file})
        return creds

    def save(self, path: Path) -> None:
        data = self.model_dump(mode="json", exclude_none=True)
        for k in ("password", "nats_password", "redis_password", "nats_issuer_seed", "nats_system_password"):
            secret = getattr(self, k)
            if secret is not None:
                data[k] = secret.get_secret_value()
        write_secret(path, json.dumps(data, indent=2) + "\n")


@dataclass(frozen=True)
class Login:
    username: str
    password: str = field(repr=False)


def is_tls_url(url: str) -> bool:
    return urlparse(url).scheme in TLS_SCHEMES


@functools.lru_cache(maxsize=32)
def client_tls(ca_file: Path | None, *extra: Path | None) -> ssl.SSLContext:
    """A client TLS context verifying servers against ``ca_file`` (else the system's CAs);
    ``extra`` CA files are trusted as well. Built once per set of CA files and shared (a
    context serves any number of connections; the system's CAs cost tens of ms to load)."""
    ctx = ssl.create_default_context(cafile=str(ca_file) if ca_file else None)
    for more in extra:
        if more is not None:
            ctx.load_verify_locations(cafile=str(more))
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    return ctx


def same_broker(a: str | None, b: str | None) -> bool:
    """Whether two broker URLs name the same host and port (whatever their spelling)."""
    if not a or not b:
        return False
    ua, ub = urlparse(a), urlparse(b)
    return (ua.hostname or "").lower() == (ub.hostname or "").lower() and ua.port == ub.port


@dataclass(frozen=True)
class Access:
    """URLs, logins and the CA of one identity; each broker's client asks it for options."""

    mqtt_url: str | None = None
    nats_url: str | None = None
    redis_url: str | None = None
    ca_file: Path | None = None
    mqtt: Login | None = None
    nats: Login | None = None
    redis: Login | None = None
    nats_inbox: str | None = None  # a device's own inbox prefix (its replies are its own)

    @classmethod
    def build(
        cls,
        creds: Credentials | None,
        *,
        mqtt_url: str | None = None,
        nats_url: str | None = None,
        redis_url: str | None = None,
        ca_file: Path | None = None,
    ) -> Access:
        """URLs from the credentials file when it has them, else the given ones (settings)."""
        c = creds or Credentials()

        def login(user: str | None, pw: SecretStr | None) -> Login | None:
            return Login(user, pw.get_secret_value() if pw else "") if user else None

        return cls(
            mqtt_url=c.mqtt_url or mqtt_url,
            nats_url=c.nats_url or nats_url,
            redis_url=c.redis_url or redis_url,
            ca_file=c.ca_file or ca_file,
            mqtt=login(c.username, c.password),
            nats=login(c.nats_username, c.nats_password),
            redis=login(c.redis_username, c.redis_password),
        )

    @classmethod
    def from_settings(cls, settings: Any) -> Access:
        """From a service's settings: its credentials file (if any) plus its broker URLs."""
        path: Path | None = getattr(settings, "credentials_file", None)
        creds = Credentials.load(path) if path is not None else None
        return cls.build(
            creds,
            mqtt_url=getattr(settings, "mqtt_url", None),
            nats_url=getattr(settings, "nats_url", None),
            redis_url=getattr(settings, "redis_url", None),
            ca_file=getattr(settings, "ca_file", None),
        )

    def tls(self) -> ssl.SSLContext:
        return client_tls(self.ca_file)

    def nats_options(self) -> dict[str, Any]:
        """Keyword arguments for ``nats.connect`` (besides the URL)."""
        opts: dict[str, Any] = {}
        if self.nats is not None:
            opts["user"] = self.nats.username
            opts["password"] = self.nats.password
        if self.nats_inbox:
            opts["inbox_prefix"] = self.nats_inbox
        if self.nats_url and is_tls_url(self.nats_url):
            opts["tls"] = self.tls()
        return opts

    def redis_options(self) -> dict[str, Any]:
        """Keyword arguments for redis-py's ``from_url`` (besides the URL)."""
        opts: dict[str, Any] = {}
        if self.redis is not None:
            opts["username"] = self.redis.username
            opts["password"] = self.redis.password
        if self.redis_url and is_tls_url(self.redis_url):
            if self.ca_file is not None:
                opts["ssl_ca_certs"] = str(self.ca_file)
            opts["ssl_cert_reqs"] = "required"
        return opts
