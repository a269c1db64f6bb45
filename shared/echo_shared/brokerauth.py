"""Who may do what on each broker: the static identities of the cloud services.

Rendered into each broker's own mechanism (no hand-written plumbing):

- Mosquitto: the dynamic-security plugin's JSON (``dynsec.json``): one client per service,
  one role per service, default deny for publish, receive and subscribe. Devices are
  added at run time by the master (``dynsec`` module), each with a role of its own.
- NATS: a user per service with subject permissions (bcrypt-hashed passwords).
- Redis: an ACL user per service with key patterns (``users.acl``, SHA-256 passwords);
  the ``default`` user is off.

Topics, subjects and keys start with the namespace, which is a wildcard here (``+``,
``*``): one set of service identities serves every namespace on a broker. What separates
services is the shape of what they may touch (the registry: ``*:device:*``; the master:
``*:df:*``...), and what separates devices is their own dynamic role.
"""

from __future__ import annotations

import base64
import hashlib
import json
import secrets
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from .natsauth import (
    CalloutConfig,
    NatsPermissions,
    StaticUser,
    callout_permissions,
    hash_password,
    js_publish_permissions,
    render_auth_config,
    request_permissions,
    responder_permissions,
)

SERVICES = ("master", "registry", "scheduler", "migrator")
TESTER = "tester"  # the test harness's superuser (never in a default bundle)
DYNSEC_ITERATIONS = 101
DYNSEC_CONTROL = "$CONTROL/dynamic-security/#"


@dataclass(frozen=True)
class MqttRights:
    publish: tuple[str, ...] = ()
    subscribe: tuple[str, ...] = ()  # subscription filters allowed (patterns), deliveries too


@dataclass(frozen=True)
class RedisRights:
    keys: tuple[str, ...] = ()
    commands: str = "+@all -@dangerous"


@dataclass(frozen=True)
class Rights:
    mqtt: MqttRights | None = None
    nats: NatsPermissions | None = None
    redis: RedisRights | None = None
    dynsec_admin: bool = False
    nats_system: bool = False  # a login in NATS' system account: disconnect revoked devices (KICK)


def _dev(leaf: str) -> str:
    return f"+/dev/+/{leaf}"


# the event log (echo_shared.events): the master, registry and migrator record what happened
_EVENTS = ("*:events", "*:events:*")

# JetStream: stream names embed the namespace, so services' rights are per API verb
_JS_STREAMS = NatsPermissions(
    pub_allow=("$JS.API.INFO", "$JS.API.STREAM.INFO.*", "$JS.API.STREAM.CREATE.*", "$JS.API.STREAM.UPDATE.*")
)
_JS_CONSUMERS = NatsPermissions(pub_allow=("$JS.API.CONSUMER.>", "$JS.ACK.>", "$JS.FC.>"))
_JS_STORES = NatsPermissions(  # the object store (large operator state) and the channels' progress bucket
    pub_allow=(
        "$JS.API.STREAM.NAMES",
        "$JS.API.STREAM.MSG.GET.*",
        "$JS.API.STREAM.PURGE.*",
        "$JS.API.DIRECT.GET.>",
        "$O.>",
        "$KV.>",
    )
)

SERVICE_RIGHTS: dict[str, Rights] = {
    "master": Rights(
        mqtt=MqttRights(
            publish=(_dev("cmd"),),
            subscribe=(_dev("ack"), _dev("status"), _dev("ckpt")),
        ),
        nats=NatsPermissions.union(
            # *.master.kick: an API replica wakes the leading one's reconciler
            request_permissions(("*.scheduler.>", "*.registry.>", "*.migrator.>", "*.master.kick")),
            responder_permissions(("*.master.>",)),
            _JS_STREAMS,
            _JS_CONSUMERS,
            _JS_STORES,
            callout_permissions(),  # the master checks devices' NATS logins (auth callout)
        ),
        redis=RedisRights(
            keys=(
                "*:df:*",
                "*:dfs",
                "*:dfs:*",
                "*:token:*",
                "*:tokens",
                "*:tokendigest:*",
                "*:audit",
                "*:console:*",
                "*:enrol:*",
                "*:identity:*",
                "*:identities",
                "*:lease:master*",
                *_EVENTS,
            )
        ),
        dynsec_admin=True,
        nats_system=True,
    ),
    "registry": Rights(
        mqtt=MqttRights(subscribe=(_dev("hello"), _dev("hb"), _dev("bye"))),
        nats=NatsPermissions.union(
            responder_permissions(("*.registry.>",)), js_publish_permissions(("*.events.>",)), _JS_STREAMS
        ),
        redis=RedisRights(keys=("*:device:*", "*:devices", "*:lease:registry*", *_EVENTS)),
    ),
    "scheduler": Rights(
        nats=NatsPermissions.union(
            responder_permissions(("*.scheduler.>",)),
            request_permissions(("*.registry.>",)),
            # the registry's device events: its cached device list is dropped on each
            NatsPermissions(sub_allow=("*.events.device.>",)),
        )
    ),
    "migrator": Rights(
        nats=NatsPermissions.union(
            request_permissions(("*.scheduler.>", "*.registry.>", "*.master.>")),
            responder_permissions(("*.migrator.>",)),
            _JS_STREAMS,
            _JS_CONSUMERS,
        ),
        redis=RedisRights(
            keys=(
                "*:migration:*",
                "*:migrations",
                "*:migrations:*",
                "*:rebalance:*",
                "*:lease:migrator*",
                *_EVENTS,
            )
        ),
    ),
}

TESTER_RIGHTS = Rights(
    mqtt=MqttRights(publish=("#",), subscribe=("#",)),
    nats=NatsPermissions(pub_allow=(">",), sub_allow=(">",), responses=True),
    redis=RedisRights(keys=("*",), commands="+@all"),
)


@dataclass
class Identity:
    """A static identity and its passwords (one per broker)."""

    name: str
    rights: Rights
    mqtt_password: str = field(default_factory=lambda: secrets.token_urlsafe(24), repr=False)
    nats_password: str = field(default_factory=lambda: secrets.token_urlsafe(24), repr=False)
    redis_password: str = field(default_factory=lambda: secrets.token_urlsafe(24), repr=False)
    nats_system_password: str = field(default_factory=lambda: secrets.token_urlsafe(24), repr=False)


# ------------------------------------------------------------------ Mosquitto


def dynsec_password(password: str, *, salt: bytes | None = None) -> dict[str, Any]:
    """The dynamic-security plugin's password fields (PBKDF2-SHA512, base64)."""
    salt = salt or secrets.token_bytes(12)
    digest = hashlib.pbkdf2_hmac("sha512", password.encode(), salt, DYNSEC_ITERATIONS)
    return {
        "password": base64.b64encode(digest).decode(),
        "salt": base64.b64encode(salt).decode(),
        "iterations": DYNSEC_ITERATIONS,
    }


def mqtt_acls(rights: MqttRights) -> list[dict[str, Any]]:
    """Dynsec ACL entries: publish = publishClientSend; subscribe = the filter and its deliveries."""
    acls: list[dict[str, Any]] = []
    for t in rights.publish:
        acls.append({"acltype": "publishClientSend", "topic": t, "allow": True})
    for t in rights.subscribe:
        acls.append({"acltype": "subscribePattern", "topic": t, "allow": True})
        acls.append({"acltype": "publishClientReceive", "topic": t, "allow": True})
    return acls


def render_dynsec(identities: list[Identity]) -> str:
    """The initial ``dynsec.json``: services and their roles; everything else denied."""
    clients: list[dict[str, Any]] = []
    roles: list[dict[str, Any]] = []
    admin_role = "echo-dynsec-admin"
    need_admin = False
    for ident in identities:
        r = ident.rights
        if r.mqtt is None and not r.dynsec_admin:
            continue
        role = f"echo-{ident.name}"
        client_roles = [{"rolename": role}]
        roles.append({"rolename": role, "acls": mqtt_acls(r.mqtt or MqttRights())})
        if r.dynsec_admin:
            need_admin = True
            client_roles.append({"rolename": admin_role})
        clients.append(
            {"username": ident.name, "textname": f"ECHO {ident.name}", "roles": client_roles}
            | dynsec_password(ident.mqtt_password)
        )
    if need_admin:
        roles.append(
            {
                "rolename": admin_role,
                "acls": mqtt_acls(MqttRights(publish=(DYNSEC_CONTROL,), subscribe=(DYNSEC_CONTROL,))),
            }
        )
    doc = {
        "defaultACLAccess": {
            "publishClientSend": False,
            "publishClientReceive": False,
            "subscribe": False,
            "unsubscribe": True,
        },
        "clients": clients,
        "groups": [],
        "roles": roles,
    }
    return json.dumps(doc, indent=2) + "\n"


# ------------------------------------------------------------------ NATS


def render_nats_users(identities: list[Identity], callout_issuer: str | None) -> str:
    """Accounts and users (one per identity that uses NATS); devices through the master's
    auth callout when ``callout_issuer`` (its public account key) is given."""
    users = [
        StaticUser(i.name, hash_password(i.nats_password), i.rights.nats)
        for i in identities
        if i.rights.nats is not None
    ]
    system = [
        StaticUser(system_user(i.name), hash_password(i.nats_system_password), KICK_RIGHTS)
        for i in identities
        if i.rights.nats_system
    ]
    callout = CalloutConfig(callout_issuer, "master") if callout_issuer else None
    return render_auth_config(users, callout, system_users=system)


def system_user(name: str) -> str:
    return f"{name}-sys"


# the system login may ask a server to disconnect one client (a revoked device's connection)
KICK_RIGHTS = NatsPermissions(pub_allow=("$SYS.REQ.SERVER.*.KICK",), sub_allow=("_INBOX.>",))


# ------------------------------------------------------------------ Redis


# ``default`` is off: no connection can be it (anonymous clients and ``AUTH default ...`` are
# refused). It keeps every right only because Redis (7.0) replays its append-only file as
# ``default``: without them every MULTI/EXEC in the file fails at start ("NOPERM ACLs rules
# changed...") and a restart loses what was written in transactions (seen: dataflow records).
REDIS_DEFAULT_USER = "user default off resetpass ~* &* +@all"


# Redis with Sentinel (high availability): a replica logs in to its primary as
# REDIS_REPLICATION_USER, Sentinel to every Redis (and to the other sentinels) as
# REDIS_SENTINEL_USER, each with only the commands the Redis documentation lists for it.
REDIS_REPLICATION_USER = "echo-replication"
REDIS_SENTINEL_USER = "echo-sentinel"
_REPLICATION_COMMANDS = "-@all +psync +replconf +ping"
_SENTINEL_COMMANDS = (
    "-@all +multi +slaveof +ping +exec +subscribe +config|rewrite +role +publish +info "
    "+client|setname +client|kill +script|kill"
)
# what a service may ask a sentinel: where the primary is (redis-py's Sentinel client)
_SENTINEL_CLIENT_COMMANDS = (
    "-@all +auth +hello +ping +client|setname "
    "+sentinel|get-master-addr-by-name +sentinel|masters +sentinel|master +sentinel|sentinels "
    "+sentinel|replicas +sentinel|slaves"
)


def _digest(password: str) -> str:
    return hashlib.sha256(password.encode()).hexdigest()


def render_redis_acl(identities: list[Identity], internal: Mapping[str, str]) -> str:
    """A Redis ACL file: ``default`` off, one user per identity with its key patterns, and
    the replication and Sentinel logins (``internal``: ``replication``/``sentinel`` -> password)."""
    lines = [REDIS_DEFAULT_USER]
    for i in identities:
        r = i.rights.redis
        if r is None:
            continue
        keys = " ".join(f"~{k}" for k in r.keys)
        lines.append(
            f"user {i.name} on #{_digest(i.redis_password)} resetkeys {keys} resetchannels {r.commands}"
        )
    lines.append(
        f"user {REDIS_REPLICATION_USER} on #{_digest(internal['replication'])} resetkeys resetchannels "
        f"{_REPLICATION_COMMANDS}"
    )
    lines.append(
        f"user {REDIS_SENTINEL_USER} on #{_digest(internal['sentinel'])} resetkeys "
        f"resetchannels &__sentinel__:hello {_SENTINEL_COMMANDS}"
    )
    return "\n".join(lines) + "\n"


def render_sentinel_users(identities: list[Identity], internal: Mapping[str, str]) -> str:
    """The ``user`` lines of a sentinel's configuration: ``default`` off, the other sentinels
    (every command), and each identity that uses Redis, allowed only to look the primary up."""
    lines = [
        "user default off resetpass",
        f"user {REDIS_SENTINEL_USER} on #{_digest(internal['sentinel'])} allchannels +@all",
    ]
    for i in identities:
        if i.rights.redis is not None:
            lines.append(
                f"user {i.name} on #{_digest(i.redis_password)} resetchannels {_SENTINEL_CLIENT_COMMANDS}"
            )
    return "\n".join(lines) + "\n"
