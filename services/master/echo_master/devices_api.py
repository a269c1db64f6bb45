"""REST for device identities: enrolment, revocation, rotation (``access_control``).

- ``POST /api/v1/enrolments`` (admin) ``{"device", "tier", "ttl": "15m"}`` ->
  ``201 {"device", "token", "expires"}``: a one-time bootstrap token (shown once)
- ``POST /api/v1/enrol`` (the enrolment token as the bearer; no API token) ``{"device",
  "tier", "nats": bool}`` -> ``201`` the device's broker login (``echo-agent --enrol-token``
  writes it to ``credentials.json``); a reused, expired or unknown token -> ``401``
- ``POST /api/v1/devices/{id}/revoke`` (admin) -> ``200 {"device", "status": "revoked"}``
- ``POST /api/v1/devices/{id}/rotate`` (admin) -> ``200 {"device", "username", "old_retire_at"}``
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, Request
from pydantic import BaseModel, ConfigDict, Field, field_validator

from echo_shared.models import Tier

from .access_control import DeviceAccess
from .errors import Refused
from .tokens import iso, parse_ttl
from .views import ERRORS

MAX_ENROL_TTL = 30 * 86400.0
DEVICE_ID = r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$"
# a device id in a path: anything else is a 422 naming ``path.device_id`` (never reaches a broker)
DeviceId = Annotated[str, Path(pattern=DEVICE_ID, description="a device id (letters, digits, _ and -)")]


class EnrolmentBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    device: str = Field(pattern=DEVICE_ID, description="the new device's id (letters, digits, _ and -)")
    tier: Tier = Field(description="edge, fog or cloud")
    ttl: str | float = Field(
        default="15m", validate_default=True, description="how long the token may be used (e.g. 15m, 24h)"
    )

    @field_validator("ttl")
    @classmethod
    def _ttl(cls, v: str | float) -> float:
        seconds = parse_ttl(v)
        if seconds > MAX_ENROL_TTL:
            raise ValueError("an enrolment token lives 30 days at most")
        return seconds


class EnrolmentCreated(BaseModel):
    device: str
    token: str = Field(description="the one-time enrolment token; it is not shown again")
    expires: str


class EnrolBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    device: str = Field(pattern=DEVICE_ID)
    tier: Tier
    nats: bool = Field(default=False, description="the device reaches NATS: it gets a NATS login too")


class EnrolReply(BaseModel):
    device: str
    mqtt_url: str
    ca_pem: str | None = None
    username: str
    password: str
    nats_url: str | None = None
    nats_username: str | None = None
    nats_password: str | None = None


class RevokeReply(BaseModel):
    device: str
    status: str


class RotateReply(BaseModel):
    device: str
    username: str
    old_retire_at: str


def bearer(request: Request) -> str:
    value = request.headers.get("authorization", "")
    scheme, _, token = value.partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token or " " in token:
        raise Refused(401, "enrolment needs the one-time enrolment token: Authorization: Bearer <token>")
    return token


def devices_router(access: DeviceAccess) -> APIRouter:
    r = APIRouter()

    @r.post(
        "/api/v1/enrolments",
        status_code=201,
        response_model=EnrolmentCreated,
        responses=ERRORS,
        summary="A one-time enrolment token for a new device (admin)",
    )
    async def create_enrolment(body: EnrolmentBody) -> EnrolmentCreated:
        token, expires = await access.enrolment(body.device, body.tier.value, float(body.ttl))
        return EnrolmentCreated(device=body.device, token=token, expires=iso(expires))

    @r.post(
        "/api/v1/enrol",
        status_code=201,
        response_model=EnrolReply,
        responses=ERRORS,
        summary="Exchange an enrolment token (the bearer) for the device's broker login",
    )
    async def enrol(request: Request, body: EnrolBody) -> EnrolReply:
        token = bearer(request)
        client = request.client.host if request.client else ""
        login = await access.enrol(token, body.device, body.tier.value, body.nats, client)
        return EnrolReply(**login.__dict__)

    @r.post(
        "/api/v1/devices/{device_id}/revoke",
        response_model=RevokeReply,
        responses=ERRORS,
        summary="Revoke a device: the broker drops it, its credentials stop working, its tasks fail over",
    )
    async def revoke(device_id: DeviceId) -> RevokeReply:
        ident = await access.revoke(device_id)
        return RevokeReply(device=ident.device, status=ident.status)

    @r.post(
        "/api/v1/devices/{device_id}/rotate",
        response_model=RotateReply,
        responses=ERRORS,
        summary="Give a connected device new credentials; the old ones stop after a grace period",
    )
    async def rotate(device_id: DeviceId) -> RotateReply:
        username, retire_at = await access.rotate(device_id)
        return RotateReply(device=device_id, username=username, old_retire_at=iso(retire_at))

    return r
