"""Who may do what on NATS: static service users in the server config, devices through an
auth callout, and the subjects nats-py needs for each JetStream use.

- Services are static: ``render_auth_config`` writes them into nats-server's config (one
  application account ``ECHO`` with JetStream, bcrypt-hashed passwords, per-user
  ``permissions``; the system account ``SYS``) and lists them all as ``auth_users``, so they
  bypass the callout.
- Any other login is sent by the server (≥ 2.10, config mode) as a signed request on
  ``$SYS.REQ.USER.AUTH``; ``AuthCallout`` (run by the callout user, in the master) asks
  ``authorize(username, password, client)`` and answers with a user JWT carrying the
  returned ``NatsPermissions`` (``natsjwt``), or a refusal. Permissions are fixed at connect
  time: a connection keeps what it got; a new grant needs a new connection (a user TTL
  bounds how long a grant lasts: the server then ends the connection).
- ``js_*`` / ``kv_permissions`` / ``object_store_permissions``: least-privilege sets for what
  nats-py 2.16 publishes (checked against a real server by tests/integration).

Requests are not encrypted (no xkey): they travel inside the server and over the callout
user's connection (TLS when the listener has it), and nobody but the callout user may
subscribe to them: every other user gets ``$SYS.>`` in its subscribe deny list here (a
``>`` subscriber would otherwise read every password), and the server itself forbids
publishing on ``$SYS.REQ.USER.AUTH`` in the callout account.

An empty allow list means "nothing" here (rendered as a deny of ``>``): nats-server reads a
user without permissions as allowed everything.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import bcrypt
from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg

from .natsjwt import PREFIX_ACCOUNT as _PREFIX_ACCOUNT
from .natsjwt import (
    ClientInfo,
    NkeyPair,
    encode_authorization_response,
    encode_user_jwt,
    is_public_key,
    parse_authorization_request,
)

log = logging.getLogger(__name__)

CALLOUT_SUBJECT = "$SYS.REQ.USER.AUTH"
APP_ACCOUNT = "ECHO"
SYSTEM_ACCOUNT = "SYS"
DEFAULT_INBOX = "_INBOX"
JS_API = "$JS.API"


def _unique(*groups: Iterable[str]) -> tuple[str, ...]:
    return tuple(dict.fromkeys(s for g in groups for s in g))


def _check_subjects(subjects: tuple[str, ...], *, queue_ok: bool) -> None:
    for s in subjects:
        parts = s.split(" ")
        if not s or len(parts) > (2 if queue_ok else 1) or any(not p or "\t" in p for p in parts):
            raise ValueError(f"invalid NATS permission subject {s!r}")


@dataclass(frozen=True)
class NatsPermissions:
    """Publish / subscribe allow and deny lists (deny wins); ``responses``: may answer the
    requests it receives (one reply each, on their reply subject, whatever the allow list)."""

    pub_allow: tuple[str, ...] = ()
    pub_deny: tuple[str, ...] = ()
    sub_allow: tuple[str, ...] = ()
    sub_deny: tuple[str, ...] = ()
    responses: bool = False

    def __post_init__(self) -> None:
        _check_subjects(self.pub_allow + self.pub_deny, queue_ok=False)
        _check_subjects(self.sub_allow + self.sub_deny, queue_ok=True)

    def __or__(self, other: NatsPermissions) -> NatsPermissions:
        return NatsPermissions(
            pub_allow=_unique(self.pub_allow, other.pub_allow),
            pub_deny=_unique(self.pub_deny, other.pub_deny),
            sub_allow=_unique(self.sub_allow, other.sub_allow),
            sub_deny=_unique(self.sub_deny, other.sub_deny),
            responses=self.responses or other.responses,
        )

    @classmethod
    def union(cls, *parts: NatsPermissions) -> NatsPermissions:
        out = cls()
        for p in parts:
            out = out | p
        return out

    def _lists(self) -> tuple[dict[str, list[str]], dict[str, list[str]]]:
        """(publish, subscribe) as ``{allow, deny}``: empty allow = deny all; ``$SYS.>`` (the
        callout's requests, with passwords, and its answers) is denied to subscribers unless
        they ask for a ``$SYS`` subject explicitly (the callout user)."""

        def one(allow: tuple[str, ...], deny: tuple[str, ...]) -> dict[str, list[str]]:
            out: dict[str, list[str]] = {}
            if allow:
                out["allow"] = list(allow)
            if deny or not allow:
                out["deny"] = list(deny) if allow else list(_unique(deny, [">"]))
            return out

        sys_wanted = any(s.startswith("$SYS.") for s in self.sub_allow)
        sub_deny = self.sub_deny if sys_wanted else _unique(self.sub_deny, ["$SYS.>"])
        return one(self.pub_allow, self.pub_deny), one(self.sub_allow, sub_deny)

    def jwt_claims(self) -> dict[str, Any]:
        """The ``pub`` / ``sub`` / ``resp`` claims of a user JWT."""
        pub, sub = self._lists()
        out: dict[str, Any] = {"pub": pub, "sub": sub}
        if self.responses:
            out["resp"] = {"max": 1, "ttl": 0}  # the server's defaults: one reply within 2 min
        return out

    def config_block(self) -> str:
        """The ``permissions`` value of a user in nats-server's config."""
        pub, sub = self._lists()
        text = f"{{publish: {json.dumps(pub)}, subscribe: {json.dumps(sub)}"
        return text + (", allow_responses: true}" if self.responses else "}")


# ------------------------------------------------------------------ server config


def hash_password(password: str, *, rounds: int = 11) -> str:
    """bcrypt (``$2b$``; nats-server accepts ``$2a$``, ``$2b$``, ``$2x$``, ``$2y$``)."""
    return bcrypt.hashpw(password.encode(), bcrypt.gensalt(rounds=rounds)).decode()


@dataclass(frozen=True)
class StaticUser:
    """A user written into the server config (a service, the callout user, a tester)."""

    name: str
    password_hash: str = field(repr=False)  # ``hash_password``
    permissions: NatsPermissions

    def __post_init__(self) -> None:
        if not self.name or any(c.isspace() or c in "\"'" for c in self.name):
            raise ValueError(f"invalid NATS user name {self.name!r}")
        if not self.password_hash.startswith(("$2a$", "$2b$", "$2y$")):
            raise ValueError(f"password of NATS user {self.name!r} is not a bcrypt hash")


@dataclass(frozen=True)
class CalloutConfig:
    """Auth callout: ``issuer`` is the callout's public account key (``A...``);
    ``callout_user`` the static user that serves it; ``timeout``: how long the server waits
    for an answer (its ``authorization.timeout``, seconds), i.e. how long a device's login
    hangs when the callout is down before being refused."""

    issuer: str
    callout_user: str
    timeout: float = 2.0

    def __post_init__(self) -> None:
        if not is_public_key(self.issuer, _PREFIX_ACCOUNT):
            raise ValueError("the auth callout issuer must be a public account nkey (A...)")
        if self.timeout <= 0:
            raise ValueError("the auth callout timeout must be positive")


def callout_permissions() -> NatsPermissions:
    """What the callout user needs besides its own: read the requests, answer them."""
    return NatsPermissions(sub_allow=(CALLOUT_SUBJECT,), responses=True)


def render_auth_config(
    static_users: list[StaticUser],
    callout: CalloutConfig | None = None,
    *,
    account: str = APP_ACCOUNT,
    system_account: str = SYSTEM_ACCOUNT,
    jetstream: bool = True,
    system_users: list[StaticUser] | None = None,
) -> str:
    """The accounts and authorization part of nats-server's config (the caller adds
    ``listen``, ``tls`` and ``jetstream { store_dir }``). Every static user is an
    ``auth_user``: only logins nobody declared reach the callout. ``system_users`` live in
    the system account (e.g. the master's, to disconnect a revoked device: ``KICK``)."""
    sys_users = system_users or []
    names = [u.name for u in [*static_users, *sys_users]]
    if len(set(names)) != len(names):
        raise ValueError("NATS user names must be unique")
    if callout is not None and callout.callout_user not in names:
        raise ValueError(f"the callout user {callout.callout_user!r} is not among the static users")
    for acc in (account, system_account):
        if not acc.isidentifier() or acc == "$G":
            raise ValueError(f"invalid account name {acc!r}")

    def block(users: list[StaticUser]) -> str:
        return ",\n".join(
            f"      {{user: {json.dumps(u.name)}, password: {json.dumps(u.password_hash)}, "
            f"permissions: {u.permissions.config_block()}}}"
            for u in users
        )

    users = block(static_users)
    system = (
        f"  {system_account}: {{ users: [\n{block(sys_users)}\n    ] }}"
        if sys_users
        else f"  {system_account}: {{}}"
    )
    lines = [
        f"system_account: {system_account}",
        "accounts {",
        system,
        f"  {account}: {{",
        *(["    jetstream: enabled"] if jetstream else []),
        "    users: [",
        users,
        "    ]",
        "  }",
        "}",
    ]
    if callout is not None:
        lines += [
            "authorization {",
            f"  timeout: {callout.timeout:g}",
            "  auth_callout {",
            f"    issuer: {json.dumps(callout.issuer)}",
            f"    account: {account}",
            f"    auth_users: [{', '.join(json.dumps(n) for n in names)}]",
            "  }",
            "}",
        ]
    return "\n".join(lines) + "\n"


# ------------------------------------------------------------------ JetStream subjects


def inbox_permissions(inbox: str = DEFAULT_INBOX) -> NatsPermissions:
    """Replies to this client's requests (``nats.connect(inbox_prefix=...)``; give each
    identity its own prefix: whoever may subscribe to an inbox reads what is sent there,
    JetStream deliveries included)."""
    return NatsPermissions(sub_allow=(f"{inbox}.>",))


def request_permissions(subjects: Iterable[str], *, inbox: str = DEFAULT_INBOX) -> NatsPermissions:
    """Send requests (or plain messages) on ``subjects`` and get the replies."""
    return NatsPermissions(pub_allow=tuple(subjects)) | inbox_permissions(inbox)


def responder_permissions(subjects: Iterable[str]) -> NatsPermissions:
    """Serve requests on ``subjects`` (subscribe, queue groups included, and reply)."""
    return NatsPermissions(sub_allow=tuple(subjects), responses=True)


def _api(*verbs: str, inbox: str) -> NatsPermissions:
    return request_permissions((f"{JS_API}.{v}" for v in verbs), inbox=inbox)


def js_account_info_permissions(*, inbox: str = DEFAULT_INBOX) -> NatsPermissions:
    """``js.account_info()``."""
    return _api("INFO", inbox=inbox)


def js_stream_permissions(
    stream: str, *, create: bool = False, inbox: str = DEFAULT_INBOX
) -> NatsPermissions:
    """``js.stream_info(stream)``; with ``create``: ``add_stream`` / ``update_stream`` too."""
    verbs = [f"STREAM.INFO.{stream}"]
    if create:
        verbs += [f"STREAM.CREATE.{stream}", f"STREAM.UPDATE.{stream}"]
    return _api(*verbs, inbox=inbox)


def js_publish_permissions(subjects: Iterable[str], *, inbox: str = DEFAULT_INBOX) -> NatsPermissions:
    """``js.publish(subject, ..., stream=...)``: the subject, and the inbox for the ack."""
    return request_permissions(subjects, inbox=inbox)


def js_consumer_permissions(
    stream: str,
    consumer: str,
    filter_subject: str | None = None,
    *,
    create: bool = True,
    delete: bool = False,
    inbox: str = DEFAULT_INBOX,
) -> NatsPermissions:
    """A durable pull consumer as ``js.pull_subscribe(filter, durable=consumer, stream=stream)``
    uses it: info, create (nats-py puts the filter in the API subject, and the server checks
    the body against it, so only this filter can be created), fetch, ack/nak; ``delete`` for
    ``delete_consumer``."""
    verbs = [f"CONSUMER.INFO.{stream}.{consumer}", f"CONSUMER.MSG.NEXT.{stream}.{consumer}"]
    if create:
        tail = f".{filter_subject}" if filter_subject and filter_subject != ">" else ""
        verbs.append(f"CONSUMER.CREATE.{stream}.{consumer}{tail}")
    if delete:
        verbs.append(f"CONSUMER.DELETE.{stream}.{consumer}")
    return _api(*verbs, inbox=inbox) | NatsPermissions(pub_allow=(f"$JS.ACK.{stream}.{consumer}.>",))


def kv_permissions(
    bucket: str,
    keys: Iterable[str] = (">",),
    *,
    read: bool = False,
    write: bool = False,
    watch: bool = False,
    direct: bool = True,
    inbox: str = DEFAULT_INBOX,
) -> NatsPermissions:
    """A key-value bucket through ``js.key_value(bucket)`` (stream info).

    - ``read``: ``get``: with a bucket that allows direct gets (``KeyValueConfig(direct=True)``)
      a per-key subject; otherwise ``STREAM.MSG.GET``, which reads any key of the bucket.
    - ``write``: ``put`` / ``delete`` / ``purge`` (publishes on ``$KV.<bucket>.<key>``).
    - ``watch``: an ordered push consumer; nats-py creates it without a name, so the API
      subject carries no key: a watcher may watch any key of the bucket.
    """
    stream = f"KV_{bucket}"
    keys = tuple(keys)
    out = js_stream_permissions(stream, inbox=inbox)
    if read:
        out |= (
            _api(*(f"DIRECT.GET.{stream}.$KV.{bucket}.{k}" for k in keys), inbox=inbox)
            if direct
            else _api(f"STREAM.MSG.GET.{stream}", inbox=inbox)
        )
    if write:
        out |= js_publish_permissions((f"$KV.{bucket}.{k}" for k in keys), inbox=inbox)
    if watch:
        out |= _ordered_consumer(stream, inbox)
    return out


def _ordered_consumer(stream: str, inbox: str) -> NatsPermissions:
    """An unnamed (ordered) push consumer: create, info, flow-control replies."""
    return _api(f"CONSUMER.CREATE.{stream}", f"CONSUMER.INFO.{stream}.*", inbox=inbox) | NatsPermissions(
        pub_allow=(f"$JS.FC.{stream}.>",)
    )


def object_store_permissions(
    bucket: str, *, read: bool = False, write: bool = False, inbox: str = DEFAULT_INBOX
) -> NatsPermissions:
    """An object store through ``js.object_store(bucket)``; bucket-wide (chunks are named by
    a random id). ``read``: ``get`` (meta lookup, stream-name lookup, ordered consumer on the
    chunks); ``write``: ``put`` / ``delete`` (chunks, meta, and a purge of the replaced
    chunks, which the API allows on the whole bucket)."""
    stream = f"OBJ_{bucket}"
    out = _api(f"STREAM.INFO.{stream}", f"STREAM.MSG.GET.{stream}", inbox=inbox)
    if read:
        out |= _api("STREAM.NAMES", inbox=inbox) | _ordered_consumer(stream, inbox)
    if write:
        out |= js_publish_permissions((f"$O.{bucket}.C.>", f"$O.{bucket}.M.>"), inbox=inbox)
        out |= _api(f"STREAM.PURGE.{stream}", inbox=inbox)
    return out


# ------------------------------------------------------------------ the callout service


Authorizer = Callable[[str, str, ClientInfo], Awaitable[NatsPermissions | None]]


class AuthCallout:
    """Answers the server's authorization requests on ``$SYS.REQ.USER.AUTH`` (as a queue group,
    so replicas share the load). A login is accepted when ``authorize`` returns permissions,
    refused when it returns None, raises, or takes longer than ``decision_timeout``. Each
    refusal is logged once (never the password). ``user_ttl``: accepted logins expire after
    so many seconds (whole seconds, rounded up): the server then ends the connection with
    "user authentication expired", which nats-py 2.16 treats as final (closed, no
    reconnection): its owner must connect again, and gets the grant of that moment.

    ``owns``: the logins this callout decides (None: all). Several ECHO namespaces may share a
    NATS server: each answers in its own queue group and stays silent on another's logins
    (an answer from the wrong namespace would refuse a valid device: the server takes the
    first answer)."""

    def __init__(
        self,
        nc: NatsClient,
        issuer_seed: str,
        account: str,
        authorize: Authorizer,
        *,
        queue: str = "echo-auth-callout",
        concurrency: int = 32,
        decision_timeout: float = 1.5,
        user_ttl: float | None = None,
        owns: Callable[[str], bool] | None = None,
    ) -> None:
        self._nc = nc
        self._owns = owns
        self._issuer = NkeyPair.from_seed(issuer_seed)
        if not is_public_key(self._issuer.public_key, _PREFIX_ACCOUNT):
            raise ValueError("the auth callout issuer seed must be an account seed (SA...)")
        self.account = account
        self._authorize = authorize
        self._queue = queue
        self._slots = asyncio.Semaphore(concurrency)
        self._decision_timeout = decision_timeout
        self._user_ttl = user_ttl
        self._sub: Any = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._closed = False
        self.accepted = 0
        self.refused = 0
        self.malformed = 0

    @property
    def issuer(self) -> str:
        return self._issuer.public_key

    async def start(self) -> None:
        if self._closed:
            raise RuntimeError("AuthCallout is closed")
        if self._sub is None:
            self._sub = await self._nc.subscribe(
                CALLOUT_SUBJECT, queue=self._queue, cb=self._on_msg, pending_msgs_limit=4096
            )
            await self._nc.flush()

    async def __aenter__(self) -> AuthCallout:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self, timeout: float = 2.0) -> None:
        """Stop answering (idempotent); requests in flight are abandoned (the server refuses
        them on its own timeout)."""
        if self._closed:
            return
        self._closed = True
        sub, self._sub = self._sub, None
        if sub is not None:
            with contextlib.suppress(Exception):
                async with asyncio.timeout(timeout):
                    await sub.unsubscribe()
        tasks = list(self._tasks)
        for t in tasks:
            t.cancel()
        if tasks:
            await asyncio.wait(tasks, timeout=timeout)

    async def _on_msg(self, msg: Msg) -> None:
        await self._slots.acquire()  # bounded: beyond it, requests wait in the subscription
        if self._closed:
            self._slots.release()
            return
        task = asyncio.create_task(self._handle(msg))
        self._tasks.add(task)
        task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        self._slots.release()

    async def _handle(self, msg: Msg) -> None:
        try:
            req = parse_authorization_request(msg.data)
        except Exception as e:
            self.malformed += 1
            log.warning("NATS auth callout: malformed request ignored (%s)", e)
            if msg.reply:
                await self._respond(msg, b"")  # the server reads an empty answer as a refusal
            return
        if self._owns is not None and not self._owns(req.username):
            return  # another namespace's login: its own callout answers
        info = ClientInfo.of(req)
        perms: NatsPermissions | None = None
        reason = "unknown user or wrong password"
        try:
            async with asyncio.timeout(self._decision_timeout):
                perms = await self._authorize(req.username, req.password, info)
        except TimeoutError:
            reason = f"no decision within {self._decision_timeout}s"
        except Exception as e:
            text = f"{type(e).__name__}: {e}"
            reason = text.replace(req.password, "***") if req.password else text
        try:
            if perms is not None:
                expires = math.ceil(time.time() + self._user_ttl) if self._user_ttl is not None else None
                user_jwt = encode_user_jwt(
                    self._issuer,
                    user_nkey=req.user_nkey,
                    account=self.account,
                    name=req.username,
                    permissions=perms.jwt_claims(),
                    expires=expires,
                )
                answer = encode_authorization_response(
                    self._issuer, user_nkey=req.user_nkey, server_id=req.server_id, user_jwt=user_jwt
                )
                self.accepted += 1
            else:
                answer = encode_authorization_response(
                    self._issuer, user_nkey=req.user_nkey, server_id=req.server_id, error="not authorized"
                )
                self.refused += 1
                log.warning(
                    "NATS login refused: user=%r host=%s client=%r: %s",
                    req.username,
                    info.host,
                    info.name,
                    reason,
                )
        except Exception:
            self.malformed += 1
            log.exception("NATS auth callout: cannot answer a request of %r", req.username)
            return
        await self._respond(msg, answer.encode())

    async def _respond(self, msg: Msg, data: bytes) -> None:
        try:
            await msg.respond(data)
        except Exception as e:  # connection lost: the server refuses on its own timeout
            log.debug("NATS auth callout: answer not sent: %s", e)


__all__ = [
    "APP_ACCOUNT",
    "CALLOUT_SUBJECT",
    "DEFAULT_INBOX",
    "SYSTEM_ACCOUNT",
    "AuthCallout",
    "Authorizer",
    "CalloutConfig",
    "ClientInfo",
    "NatsPermissions",
    "StaticUser",
    "callout_permissions",
    "hash_password",
    "inbox_permissions",
    "js_account_info_permissions",
    "js_consumer_permissions",
    "js_publish_permissions",
    "js_stream_permissions",
    "kv_permissions",
    "object_store_permissions",
    "render_auth_config",
    "request_permissions",
    "responder_permissions",
]
