"""The device's identity: enrolment once, credentials reused at every start, rotation.

``echo-agent --device-id ID --tier T --enrol-token TOKEN --state-dir DIR`` exchanges the
one-time token (``POST {ECHO_API_URL}/api/v1/enrol``) for the device's broker login and
writes ``DIR/credentials.json`` (0600) and ``DIR/ca.pem``. Started again with the same
``--state-dir`` it reuses them (the token, even if still given, is not used again). A
reused, expired or unknown token, an id enrolled already, or an unreachable API is one
line on stderr and exit code 2 (``EnrolmentFailed``).

``ECHO_API_URL`` may list several master replicas, comma-separated: one that cannot be
connected to (refused, or no connection within the timeout: the request never reached it)
is skipped for the next; an answer, even an error, is final, and so is a failure once
connected (the token may have been spent).

Rotation: the master sends ``RotateCredentials`` on the device's command topic; the agent
saves the new login, uses it for every (re)connect from now on (its open sessions keep
working until the old login retires) and acknowledges.
"""

from __future__ import annotations

import logging
import ssl
from pathlib import Path
from typing import TYPE_CHECKING

from pydantic import SecretStr

from echo_shared.credentials import Access, Credentials, Login, client_tls
from echo_shared.errors import EchoError
from echo_shared.messages import RotateCredentials
from echo_shared.names import Names
from echo_shared.secretfiles import SecretFileError, read_secret
from echo_shared.urls import split_urls

from .settings import AgentSettings

if TYPE_CHECKING:
    import httpx

log = logging.getLogger(__name__)

CREDENTIALS = "credentials.json"
CA = "ca.pem"
ENROL_TIMEOUT = 15.0


class EnrolmentFailed(EchoError):
    """The device has no usable identity; the message is the one line the user sees."""


def credentials_path(state_dir: Path) -> Path:
    return state_dir / CREDENTIALS


def read_token_file(path: Path) -> str:
    try:
        return read_secret(path)
    except SecretFileError as e:
        raise EnrolmentFailed(str(e)) from e


def wants_nats(settings: AgentSettings) -> bool:
    return bool(settings.nats_url) or "nats" in (settings.brokers or [])


def load_or_enrol(settings: AgentSettings, enrol_token: str | None) -> Credentials | None:
    """The device's credentials: from its state dir, else by enrolling; None: none configured."""
    if settings.state_dir is None:
        if enrol_token:
            raise EnrolmentFailed("--enrol-token needs --state-dir DIR (where the credentials are kept)")
        if settings.credentials_file is not None:
            return _load(settings.credentials_file, settings.device_id)
        return None
    path = credentials_path(settings.state_dir)
    if path.exists():
        return _load(path, settings.device_id)
    if not enrol_token:
        raise EnrolmentFailed(
            f"no credentials in {settings.state_dir}: enrol this device first "
            f"(echoctl devices enrol {settings.device_id} --tier {settings.tier.value}, then "
            "echo-agent ... --enrol-token TOKEN)"
        )
    return enrol(settings, enrol_token)


def _load(path: Path, device: str) -> Credentials:
    try:
        creds = Credentials.load(path)
    except SecretFileError as e:
        raise EnrolmentFailed(str(e)) from e
    if creds.device is not None and creds.device != device:
        raise EnrolmentFailed(f"{path} holds the credentials of device {creds.device}, not {device}")
    return creds


def enrol(
    settings: AgentSettings, token: str, *, transport: httpx.BaseTransport | None = None
) -> Credentials:
    """Exchange ``token`` for the device's credentials at the first API of ``ECHO_API_URL``
    that can be connected to (``transport``: a stand-in for tests)."""
    assert settings.state_dir is not None
    urls = [u.rstrip("/") for u in split_urls(settings.api_url or "")]
    if not urls:
        raise EnrolmentFailed("enrolment needs the master's API: set ECHO_API_URL")
    body = {"device": settings.device_id, "tier": settings.tier.value, "nats": wants_nats(settings)}
    verify: ssl.SSLContext | bool = client_tls(settings.ca_file) if settings.ca_file else True
    import httpx  # only a device's first start enrols: an enrolled agent never loads it

    failed: list[str] = []
    with httpx.Client(timeout=ENROL_TIMEOUT, verify=verify, transport=transport) as http:
        for url in urls:
            try:
                r = http.post(url + "/api/v1/enrol", json=body, headers={"Authorization": f"Bearer {token}"})
            except (httpx.ConnectError, httpx.ConnectTimeout) as e:  # never reached it: try the next
                failed.append(f"{url} ({str(e) or type(e).__name__})")
                continue
            except httpx.HTTPError as e:  # it may have been served: the token may be spent
                raise EnrolmentFailed(
                    f"cannot reach the ECHO API at {url} to enrol: {str(e) or type(e).__name__}"
                ) from e
            break
        else:
            raise EnrolmentFailed(f"cannot reach the ECHO API to enrol: {', '.join(failed)}")
    if r.status_code != 201:
        try:
            detail = str(r.json().get("detail") or r.text)
        except ValueError:
            detail = r.text.strip()[:200]
        raise EnrolmentFailed(f"enrolment of {settings.device_id} refused (HTTP {r.status_code}): {detail}")
    doc = r.json()
    settings.state_dir.mkdir(parents=True, exist_ok=True)
    settings.state_dir.chmod(0o700)
    ca_file: Path | None = None
    if doc.get("ca_pem"):
        ca_file = settings.state_dir / CA
        ca_file.write_text(doc["ca_pem"])
    creds = Credentials(
        device=settings.device_id,
        mqtt_url=doc["mqtt_url"],
        ca_file=ca_file or settings.ca_file,
        username=doc["username"],
        password=SecretStr(doc["password"]),
        nats_url=doc.get("nats_url"),
        nats_username=doc.get("nats_username"),
        nats_password=SecretStr(doc["nats_password"]) if doc.get("nats_password") else None,
    )
    creds.save(credentials_path(settings.state_dir))
    log.info(
        "device %s enrolled; credentials in %s", settings.device_id, credentials_path(settings.state_dir)
    )
    return creds


def apply(settings: AgentSettings, creds: Credentials | None) -> AgentSettings:
    """Settings with the broker URLs of the credentials where the environment names none
    (a device behind a proxy or another route sets ECHO_MQTT_URL / ECHO_NATS_URL)."""
    if creds is None:
        return settings
    update: dict[str, object] = {}
    if not settings.mqtt_url and creds.mqtt_url:
        update["mqtt_url"] = creds.mqtt_url
    if creds.device is not None:  # an enrolled device reaches NATS only if it got a NATS login
        update["nats_url"] = (settings.nats_url or creds.nats_url) if creds.nats_username else None
    return settings.model_copy(update=update)


def access_of(settings: AgentSettings, creds: Credentials | None) -> Access:
    """The settings' URLs (after ``apply``) with the credentials' logins and CA."""
    base = Access.build(creds, ca_file=settings.ca_file)
    return Access(
        mqtt_url=settings.mqtt_url,
        nats_url=settings.nats_url,
        ca_file=base.ca_file,
        mqtt=base.mqtt,
        nats=base.nats,
        nats_inbox=Names(settings.namespace).device_inbox(settings.device_id) if base.nats else None,
    )


def rotated(creds: Credentials, cmd: RotateCredentials) -> Credentials:
    return creds.model_copy(
        update={
            "username": cmd.username,
            "password": SecretStr(cmd.password),
            "nats_username": cmd.nats_username or creds.nats_username,
            "nats_password": SecretStr(cmd.nats_password) if cmd.nats_password else creds.nats_password,
        }
    )


def save_rotation(settings: AgentSettings, creds: Credentials, cmd: RotateCredentials) -> Credentials:
    """Persist the new login (before acknowledging it: a restart must come back with it)."""
    new = rotated(creds, cmd)
    path = (
        credentials_path(settings.state_dir) if settings.state_dir is not None else settings.credentials_file
    )
    if path is not None:
        new.save(path)
    return new


def login_of(creds: Credentials) -> Login | None:
    if creds.username is None:
        return None
    return Login(creds.username, creds.password.get_secret_value() if creds.password else "")
