"""NATS nkeys and JWTs (v2), as much as an auth callout needs: no NATS library involved.

- **nkeys**: an ed25519 key pair written the NATS way: base32 (no padding) of a prefix
  byte (``A`` account, ``U`` user, ``N`` server...), the 32-byte key and a CRC-16
  (XMODEM, little-endian). A seed is ``S`` + the role + the 32-byte private seed.
  ``NkeyPair.generate()`` makes one (nkeys.py 0.2.1 cannot); signing uses ``cryptography``.
- **JWTs**: ``<header>.<claims>.<signature>``, each base64url without padding; header
  ``{"typ":"JWT","alg":"ed25519-nkey"}``; the signature is ed25519 over
  ``<header>.<claims>`` by the issuer (``iss``, an nkey public key); ``jti`` is the base32
  (no padding) of SHA-512/256 over the standard claims (``aud`` ``exp`` ``iat`` ``iss``
  ``name`` ``nbf`` ``sub``, in that order, empty ones left out), as NATS' Go library does.
  NATS-specific claims sit under ``nats`` with ``type`` and ``version: 2``.

The three claim sets of an auth callout: the server's **authorization request**
(``type: authorization_request``, signed by the server's ``N`` key), the service's
**authorization response** (``type: authorization_response``, ``sub`` = the request's
``user_nkey``, ``aud`` = the server's id, with ``nats.jwt`` or ``nats.error``), and the
**user** JWT inside it (``type: user``, ``sub`` = ``user_nkey``, ``aud`` = the account the
user is placed in, ``nats.pub`` / ``nats.sub`` / ``nats.resp``). Both are signed by the
callout issuer (an ``A`` key named in the server's ``auth_callout.issuer``).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import os
import time
from dataclasses import dataclass, field
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

PREFIX_SEED = 18 << 3  # "S"
PREFIX_PRIVATE = 15 << 3  # "P"
PREFIX_SERVER = 13 << 3  # "N"
PREFIX_CLUSTER = 2 << 3  # "C"
PREFIX_OPERATOR = 14 << 3  # "O"
PREFIX_ACCOUNT = 0  # "A"
PREFIX_USER = 20 << 3  # "U"
_PUBLIC_PREFIXES = {PREFIX_SERVER, PREFIX_CLUSTER, PREFIX_OPERATOR, PREFIX_ACCOUNT, PREFIX_USER}

JWT_HEADER = {"typ": "JWT", "alg": "ed25519-nkey"}
JWT_VERSION = 2
AUTH_REQUEST_TYPE = "authorization_request"
AUTH_RESPONSE_TYPE = "authorization_response"
USER_TYPE = "user"
NO_LIMIT = -1


class NkeyError(ValueError):
    """A key that is not a valid nkey (encoding, checksum or role)."""


class JwtError(ValueError):
    """A JWT that is malformed, of the wrong kind, or not signed by its issuer."""


# ------------------------------------------------------------------ nkeys


def _crc16(data: bytes) -> int:
    """CRC-16/XMODEM (polynomial 0x1021, initial 0), as nkeys use."""
    crc = 0
    for byte in data:
        crc ^= byte << 8
        for _ in range(8):
            crc = ((crc << 1) ^ 0x1021) if crc & 0x8000 else (crc << 1)
            crc &= 0xFFFF
    return crc


def _b32encode(raw: bytes) -> str:
    return base64.b32encode(raw).decode().rstrip("=")


def _b32decode(text: str) -> bytes:
    try:
        return base64.b32decode(text + "=" * (-len(text) % 8))
    except (binascii.Error, ValueError) as e:
        raise NkeyError(f"not base32: {e}") from e


def _with_crc(raw: bytes) -> bytes:
    return raw + _crc16(raw).to_bytes(2, "little")


def _check_crc(raw: bytes) -> bytes:
    if len(raw) < 3:
        raise NkeyError("too short")
    body, crc = raw[:-2], int.from_bytes(raw[-2:], "little")
    if _crc16(body) != crc:
        raise NkeyError("bad checksum")
    return body


def encode_public_key(prefix: int, key: bytes) -> str:
    if prefix not in _PUBLIC_PREFIXES or len(key) != 32:
        raise NkeyError("invalid role or key length")
    return _b32encode(_with_crc(bytes([prefix]) + key))


def decode_public_key(public_key: str, expected_prefix: int | None = None) -> bytes:
    """The raw 32-byte ed25519 key of ``public_key``; checks the role when asked."""
    body = _check_crc(_b32decode(public_key))
    if len(body) != 33 or body[0] not in _PUBLIC_PREFIXES:
        raise NkeyError("not a public nkey")
    if expected_prefix is not None and body[0] != expected_prefix:
        raise NkeyError(f"public nkey of the wrong role ({public_key[:1]})")
    return body[1:]


def is_public_key(public_key: str, prefix: int) -> bool:
    try:
        decode_public_key(public_key, prefix)
    except NkeyError:
        return False
    return True


def encode_seed(prefix: int, raw_seed: bytes) -> str:
    if prefix not in _PUBLIC_PREFIXES or len(raw_seed) != 32:
        raise NkeyError("invalid role or seed length")
    head = bytes([PREFIX_SEED | (prefix >> 5), (prefix & 31) << 3])
    return _b32encode(_with_crc(head + raw_seed))


def decode_seed(seed: str) -> tuple[int, bytes]:
    """(role prefix, raw 32-byte seed) of an encoded seed."""
    body = _check_crc(_b32decode(seed))
    if len(body) != 34 or body[0] & 0xF8 != PREFIX_SEED:
        raise NkeyError("not an nkey seed")
    prefix = ((body[0] & 7) << 5) | ((body[1] & 0xF8) >> 3)
    if prefix not in _PUBLIC_PREFIXES:
        raise NkeyError("seed of an unknown role")
    return prefix, body[2:]


@dataclass(frozen=True)
class NkeyPair:
    """An nkey pair. ``seed`` is the secret (never in a repr); ``public_key`` names it."""

    seed: str = field(repr=False)
    public_key: str
    _key: Ed25519PrivateKey = field(repr=False, compare=False)

    @classmethod
    def from_seed(cls, seed: str) -> NkeyPair:
        prefix, raw = decode_seed(seed)
        key = Ed25519PrivateKey.from_private_bytes(raw)
        pub = key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
        return cls(seed=seed, public_key=encode_public_key(prefix, pub), _key=key)

    @classmethod
    def generate(cls, prefix: int = PREFIX_ACCOUNT) -> NkeyPair:
        return cls.from_seed(encode_seed(prefix, os.urandom(32)))

    def sign(self, data: bytes) -> bytes:
        return self._key.sign(data)


def verify_signature(public_key: str, data: bytes, signature: bytes) -> bool:
    try:
        raw = decode_public_key(public_key)
        Ed25519PublicKey.from_public_bytes(raw).verify(signature, data)
    except (NkeyError, InvalidSignature, ValueError):
        return False
    return True


# ------------------------------------------------------------------ JWTs


def _b64encode(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _b64decode(text: str) -> bytes:
    try:
        return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (binascii.Error, ValueError) as e:
        raise JwtError(f"not base64url: {e}") from e


def _json(obj: Any) -> bytes:
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode()


_STANDARD = ("aud", "exp", "jti", "iat", "iss", "name", "nbf", "sub")


def claims_id(claims: dict[str, Any]) -> str:
    """``jti``: base32 of SHA-512/256 over the standard claims (``jti`` itself left out)."""
    std = {k: claims[k] for k in _STANDARD if k != "jti" and claims.get(k)}
    return _b32encode(hashlib.new("sha512_256", _json(std)).digest())


def encode_jwt(claims: dict[str, Any], issuer: NkeyPair, *, now: float | None = None) -> str:
    """Sign ``claims`` (``iss``, ``iat`` and ``jti`` are set here)."""
    body = {k: v for k, v in claims.items() if k not in ("iss", "iat", "jti")}
    body["iss"] = issuer.public_key
    body["iat"] = int(time.time() if now is None else now)
    ordered: dict[str, Any] = {k: body[k] for k in _STANDARD if k in body and k != "jti"}
    ordered = {**ordered, "jti": claims_id(body)}
    ordered.update({k: v for k, v in body.items() if k not in ordered})
    head = _b64encode(_json(JWT_HEADER))
    payload = _b64encode(_json(ordered))
    signing_input = f"{head}.{payload}".encode()
    return f"{head}.{payload}.{_b64encode(issuer.sign(signing_input))}"


def decode_jwt(token: str, *, issuer_prefix: int | None = None) -> dict[str, Any]:
    """The claims of ``token`` once its header, form and signature (by ``iss``) are checked."""
    parts = token.strip().split(".")
    if len(parts) != 3:
        raise JwtError("a JWT has three parts")
    try:
        header = json.loads(_b64decode(parts[0]))
        claims = json.loads(_b64decode(parts[1]))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise JwtError(f"JWT part is not JSON: {e}") from e
    if not isinstance(header, dict) or str(header.get("typ", "")).upper() != "JWT":
        raise JwtError("not a JWT header")
    if header.get("alg") != JWT_HEADER["alg"]:
        raise JwtError(f"unsupported JWT algorithm {header.get('alg')!r}")
    if not isinstance(claims, dict):
        raise JwtError("JWT claims are not an object")
    iss = claims.get("iss")
    if not isinstance(iss, str) or not iss:
        raise JwtError("JWT has no issuer")
    if issuer_prefix is not None and not is_public_key(iss, issuer_prefix):
        raise JwtError("JWT issuer has the wrong role")
    signing_input = f"{parts[0]}.{parts[1]}".encode()
    if not verify_signature(iss, signing_input, _b64decode(parts[2])):
        raise JwtError("JWT signature does not verify")
    return claims


# ------------------------------------------------------------------ callout claims


@dataclass(frozen=True)
class AuthorizationRequest:
    """What the server says about a connecting client (``nats`` of the request JWT)."""

    server_id: str  # the server's public key: the response's ``aud``
    server_name: str
    user_nkey: str  # the response's and the user JWT's ``sub``
    username: str
    password: str = field(repr=False)
    token: str = field(repr=False)
    client_info: dict[str, Any]
    connect_opts: dict[str, Any] = field(repr=False)  # holds the password too
    client_tls: dict[str, Any] | None
    issuer: str  # the request's ``sub``: the callout issuer the server expects

    @property
    def host(self) -> str:
        return str(self.client_info.get("host", ""))

    @property
    def client_name(self) -> str:
        return str(self.connect_opts.get("name", "") or self.client_info.get("name", ""))


@dataclass(frozen=True)
class ClientInfo:
    """What the server says about a connecting client (besides its login)."""

    host: str
    name: str  # the connection name the client gave
    server_id: str
    server_name: str
    tls_version: str | None  # None: a plain connection
    user_nkey: str  # the one-off key the server made for this connection
    cid: int | None = None  # the connection's id on its server (to disconnect it: ``KICK``)

    @classmethod
    def of(cls, req: AuthorizationRequest) -> ClientInfo:
        tls = req.client_tls or {}
        return cls(
            host=req.host,
            name=req.client_name,
            server_id=req.server_id,
            server_name=req.server_name,
            tls_version=str(tls["version"]) if tls.get("version") else None,
            user_nkey=req.user_nkey,
            cid=cid if isinstance(cid := req.client_info.get("id"), int) else None,
        )


def _obj(value: Any, what: str) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise JwtError(f"{what} is not an object")
    return value


def _str(value: Any) -> str:
    return value if isinstance(value, str) else ""


def parse_authorization_request(token: str | bytes) -> AuthorizationRequest:
    """Decode and check the server's request (signed by the server it names)."""
    if isinstance(token, bytes):
        try:
            token = token.decode()
        except UnicodeDecodeError as e:
            raise JwtError("request is not text") from e
    claims = decode_jwt(token, issuer_prefix=PREFIX_SERVER)
    nats = _obj(claims.get("nats"), "nats")
    if nats.get("type") != AUTH_REQUEST_TYPE:
        raise JwtError(f"not an authorization request (type {nats.get('type')!r})")
    server = _obj(nats.get("server_id"), "server_id")
    server_id = _str(server.get("id"))
    if server_id != claims["iss"]:
        raise JwtError("request not signed by the server it names")
    user_nkey = _str(nats.get("user_nkey"))
    if not is_public_key(user_nkey, PREFIX_USER):
        raise JwtError("request has no valid user_nkey")
    opts = _obj(nats.get("connect_opts"), "connect_opts")
    tls = nats.get("client_tls")
    return AuthorizationRequest(
        server_id=server_id,
        server_name=_str(server.get("name")),
        user_nkey=user_nkey,
        username=_str(opts.get("user")),
        password=_str(opts.get("pass")),
        token=_str(opts.get("auth_token")),
        client_info=_obj(nats.get("client_info"), "client_info"),
        connect_opts=opts,
        client_tls=tls if isinstance(tls, dict) else None,
        issuer=_str(claims.get("sub")),
    )


def encode_user_jwt(
    issuer: NkeyPair,
    *,
    user_nkey: str,
    account: str,
    name: str,
    permissions: dict[str, Any],
    expires: float | None = None,
) -> str:
    """A user JWT placing ``user_nkey`` in ``account`` (by name, config mode) with ``permissions``
    (``pub`` / ``sub`` / ``resp`` in the JWT layout). ``expires``: epoch seconds; the server
    disconnects the client then (it reconnects and is authorized anew)."""
    claims: dict[str, Any] = {"aud": account, "sub": user_nkey}
    if name:
        claims["name"] = name
    if expires is not None:
        claims["exp"] = int(expires)
    claims["nats"] = {
        **permissions,
        "subs": NO_LIMIT,
        "data": NO_LIMIT,
        "payload": NO_LIMIT,
        "type": USER_TYPE,
        "version": JWT_VERSION,
    }
    return encode_jwt(claims, issuer)


def encode_authorization_response(
    issuer: NkeyPair, *, user_nkey: str, server_id: str, user_jwt: str | None = None, error: str | None = None
) -> str:
    """The service's answer: the user JWT (login accepted) or an error (refused)."""
    if (user_jwt is None) == (error is None):
        raise ValueError("exactly one of user_jwt and error")
    nats: dict[str, Any] = {"jwt": user_jwt} if user_jwt is not None else {"error": error or "refused"}
    nats |= {"type": AUTH_RESPONSE_TYPE, "version": JWT_VERSION}
    return encode_jwt({"aud": server_id, "sub": user_nkey, "nats": nats}, issuer)


__all__ = [
    "PREFIX_ACCOUNT",
    "PREFIX_SERVER",
    "PREFIX_USER",
    "AuthorizationRequest",
    "ClientInfo",
    "JwtError",
    "NkeyError",
    "NkeyPair",
    "decode_jwt",
    "decode_public_key",
    "encode_authorization_response",
    "encode_jwt",
    "encode_user_jwt",
    "is_public_key",
    "parse_authorization_request",
]
