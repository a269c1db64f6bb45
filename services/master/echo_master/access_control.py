"""Device identities and what each device may touch on the brokers.

Enrolment: an admin asks for a one-time token for a device id and tier
(``enrolment``); the agent exchanges it once (``enrol``) for its own broker login:
a Mosquitto client in the dynamic-security plugin with a role of its own, and, for a
device that reaches NATS, a NATS login checked by the auth callout. Revocation deletes
the device's clients (Mosquitto disconnects them at once), marks it ``revoked`` in the
registry (its tasks fail over as for a lost device) and refuses its NATS logins.
Rotation creates a new login, hands it to the connected agent over its command topic,
and retires the old one after a grace period.

Grants follow tasks: before a deploy command leaves, the device's role gains what the
task's channels need (publish records and read progress on an output; read records and
publish progress on an input); when a stop command was answered (or gave up), the
task's grant is withdrawn unless a newer generation of the task runs there. The role is
replaced as a whole (``modifyRole``), which does not disconnect the device, and only
when it changed; deliveries are checked against it at every message.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

from echo_shared.brokerauth import MqttRights
from echo_shared.credentials import same_broker
from echo_shared.dynsec import ChannelGrant, DynsecAdmin, DynsecError, device_rights
from echo_shared.errors import EchoError, NotFoundError, PermanentError, Problem, SpecError
from echo_shared.messages import (
    CredentialsAck,
    DeployTask,
    DeviceRevokeReply,
    DeviceRevokeRequest,
    RotateCredentials,
    StopTask,
)
from echo_shared.names import Names
from echo_shared.nats_bus import NatsBus

from .audit import AuditLog
from .errors import Refused
from .identities import ENROLLED, REVOKED, Identity, IdentityStore, Login, TaskGrant
from .nats_logins import NatsKicker

log = logging.getLogger(__name__)

# role changes per message to the broker's dynamic security (see ``push_many``)
DYNSEC_CHUNK = 25
TIERS = ("edge", "fog", "cloud")
# delivers ``RotateCredentials`` to a device and returns its answer
SendCredentials = Callable[[str, RotateCredentials], Awaitable[CredentialsAck]]


@dataclass(frozen=True)
class DeviceLogin:
    """What an agent gets at enrolment (it writes it to ``credentials.json``)."""

    device: str
    mqtt_url: str
    ca_pem: str | None
    username: str
    password: str
    nats_url: str | None = None
    nats_username: str | None = None
    nats_password: str | None = None


def task_key(dataflow: str, task: str) -> str:
    return f"{dataflow}/{task}"


class GrantRefused(PermanentError):
    """A task asks for what no task may have (e.g. an operator topic among ECHO's own)."""


# operators that use the device's own broker login when their config names no url
APP_TOPICS = {
    "io.mqtt_source": ("topic", False),
    "io.mqtt_sink": ("topic", True),
    "io.nats_source": ("subject", False),
    "io.nats_sink": ("subject", True),
}


def grants_of(
    cmd: DeployTask, names: Names, own: tuple[str | None, str | None] = (None, None)
) -> tuple[ChannelGrant, ...]:
    """What a task needs on the brokers: its channels, and its operator's own topic when the
    operator uses the platform's broker (``own``: the MQTT and NATS URLs devices get)."""
    out = [ChannelGrant(b.topic, produce=False) for b in cmd.inputs]
    out += [ChannelGrant(b.topic, produce=True) for b in cmd.outputs]
    app = APP_TOPICS.get(cmd.operator)
    nats = cmd.operator.startswith("io.nats")
    url = cmd.config.get("url")
    ours = not url or same_broker(str(url), own[1] if nats else own[0])
    if app is not None and ours and isinstance(cmd.config.get(app[0]), str):
        topic = str(cmd.config[app[0]])
        reserved = names.reserved_overlap(topic, nats=nats)
        if reserved is not None:
            raise GrantRefused(f"{app[0]} {topic!r} overlaps {reserved!r}, which is ECHO's own")
        out.append(ChannelGrant(topic, produce=app[1], app="nats" if nats else "mqtt"))
    return tuple(out)


class DeviceAccess:
    def __init__(
        self,
        store: IdentityStore,
        names: Names,
        bus: NatsBus,
        *,
        dynsec: DynsecAdmin | None,
        mqtt_url: str,
        nats_url: str | None,
        ca_file: Path | None,
        rotation_grace: float,
        send: SendCredentials | None = None,
        audit: AuditLog | None = None,
        kicker: NatsKicker | None = None,
    ) -> None:
        self.store = store
        self.names = names
        self.bus = bus
        self.dynsec = dynsec  # None: the broker has no dynamic security (insecure benchmark stack)
        self.mqtt_url = mqtt_url
        self.nats_url = nats_url
        self.ca_file = ca_file
        self.rotation_grace = rotation_grace
        self.send_credentials = send
        self.audit = audit  # enrolments and retired logins (the API's calls are audited there)
        self.kicker = kicker  # ends a revoked device's (or retired login's) NATS connections
        self._locks: dict[str, asyncio.Lock] = {}
        self._pushed: dict[str, MqttRights] = {}
        self._prepared: dict[str, Exception | None] = {}  # cmd id -> granted with its wave (or why not)

    # ------------------------------------------------------------ enrolment

    async def enrolment(self, device: str, tier: str, ttl: float) -> tuple[str, float]:
        """A one-time enrolment token for ``device`` (409 when the id is taken)."""
        self._check_id(device, tier)
        if await self.store.get(device) is not None:
            raise Refused(409, f"device {device} is already enrolled; revoked ids are not reused")
        token = "echoenrol_" + secrets.token_urlsafe(32)
        expires = await self.store.add_enrolment(token, device, tier, ttl)
        return token, expires

    async def enrol(self, token: str, device: str, tier: str, nats: bool, client: str = "") -> DeviceLogin:
        """Exchange an enrolment token (once) for the device's broker login (audited)."""
        try:
            login = await self._enrol(token, device, tier, nats)
        except Refused as e:
            await self._audit("device.enrol", e.status, device, client)
            raise
        await self._audit("device.enrol", 201, device, client)
        return login

    async def _audit(self, action: str, result: int | str, device: str, client: str = "") -> None:
        if self.audit is not None:
            try:
                await self.audit.record(action, result=result, target={"device": device}, client=client)
            except EchoError as e:  # the audit trail is down: the event still happened
                log.warning("audit of %s on %s not recorded: %s", action, device, e)

    async def _enrol(self, token: str, device: str, tier: str, nats: bool) -> DeviceLogin:
        self._check_id(device, tier)
        found = await self.store.take_enrolment(token)
        if found is None:
            raise Refused(401, "enrolment token unknown, expired or already used")
        if found["device"] != device or found["tier"] != tier:
            raise Refused(
                401,
                f"this enrolment token is for device {found['device']} ({found['tier']}), "
                f"not {device} ({tier}); it is used up",
            )
        ident = Identity(device, tier, ENROLLED, time.time(), nats)
        if not await self.store.create(ident):
            raise Refused(409, f"device {device} is already enrolled")
        username, password, nats_password = self._new_login(device, nats)
        try:
            if self.dynsec is not None:
                role = self.names.device_role(device)
                rights = device_rights(self.names, device)
                await self.dynsec.call(
                    [DynsecAdmin.create_role(role, rights)], tolerate=frozenset({"Role already exists"})
                )
                await self.dynsec.call(
                    [DynsecAdmin.set_role(role, rights), DynsecAdmin.create_client(username, password, role)]
                )
                self._pushed[device] = rights
            await self.store.add_login(username, device, nats_password)
        except BaseException:
            ident.status = REVOKED  # nothing usable was handed out; the id stays taken
            await self.store.save(ident)
            raise
        ident.logins.append(Login(username))
        await self.store.save(ident)
        log.info("device %s (%s) enrolled as %s", device, tier, username)
        return DeviceLogin(
            device=device,
            mqtt_url=self.mqtt_url,
            ca_pem=self.ca_file.read_text() if self.ca_file else None,
            username=username,
            password=password,
            nats_url=self.nats_url if nats else None,
            nats_username=username if nats else None,
            nats_password=nats_password,
        )

    def _new_login(self, device: str, nats: bool) -> tuple[str, str, str | None]:
        username = self.names.device_username(device, secrets.token_hex(4))
        return username, secrets.token_urlsafe(32), (secrets.token_urlsafe(32) if nats else None)

    def _check_id(self, device: str, tier: str) -> None:
        problems = []
        try:
            self.names.device_prefix(device)
        except ValueError as e:
            problems.append(Problem("device", str(e), "value_error"))
        if tier not in TIERS:
            problems.append(
                Problem("tier", f"unknown tier {tier!r}; tiers are {', '.join(TIERS)}", "value_error")
            )
        if problems:
            raise SpecError(problems)

    async def _identity(self, device: str) -> Identity:
        ident = await self.store.get(device)
        if ident is None:
            raise NotFoundError("device identity", device)
        return ident

    # ------------------------------------------------------------ revocation

    async def revoke(self, device: str, reason: str = "revoked by an administrator") -> Identity:
        ident = await self._identity(device)
        already = ident.status == REVOKED
        ident.status = REVOKED
        await self.store.save(ident)  # first: no grant or login is handed out any more
        for lg in ident.logins:
            await self.store.drop_login(lg.username)
        if self.dynsec is not None:
            cmds = [DynsecAdmin.delete_client(lg.username) for lg in ident.logins]
            cmds.append(DynsecAdmin.delete_role(self.names.device_role(device)))
            await self.dynsec.call(cmds, tolerate=frozenset({"Client not found", "Role not found"}))
        ident.logins = []
        await self.store.save(ident)
        if self.kicker is not None:
            await self.kicker.kick(device)
        await self.store.clear_grants(device)
        self._pushed.pop(device, None)
        await self.bus.request(
            self.names.registry_revoke, DeviceRevokeRequest(device=device, reason=reason), DeviceRevokeReply
        )
        if not already:
            log.warning("device %s revoked: %s", device, reason)
        return ident

    # ------------------------------------------------------------ rotation

    async def rotate(self, device: str) -> tuple[str, float]:
        """New login for a connected device; the old one retires after the grace period."""
        ident = await self._identity(device)
        if ident.status != ENROLLED:
            raise Refused(409, f"device {device} is {ident.status}")
        if self.send_credentials is None:
            raise Refused(503, "credential rotation needs the master's link to the devices")
        username, password, nats_password = self._new_login(device, ident.nats)
        if self.dynsec is not None:
            await self.dynsec.call(
                [DynsecAdmin.create_client(username, password, self.names.device_role(device))]
            )
        await self.store.add_login(username, device, nats_password)
        cmd = RotateCredentials(
            cmd_id=uuid.uuid4().hex,
            device=device,
            username=username,
            password=password,
            nats_username=username if nats_password else None,
            nats_password=nats_password,
        )
        try:
            ack = await self.send_credentials(device, cmd)
            if not ack.ok:
                raise Refused(409, f"{device} refused the new credentials: {ack.reason}")
        except BaseException:
            await self.store.drop_login(username)
            if self.dynsec is not None:
                with contextlib.suppress(Exception):
                    await self.dynsec.call([DynsecAdmin.delete_client(username)])
            raise
        retire_at = time.time() + self.rotation_grace
        for lg in ident.logins:
            if lg.retire_at is None:
                lg.retire_at = retire_at
        ident.logins.append(Login(username))
        await self.store.save(ident)
        log.info(
            "device %s: new login %s; the old one retires in %.0fs", device, username, self.rotation_grace
        )
        return username, retire_at

    async def retire_due(self) -> None:
        """Delete the logins whose grace period is over (Mosquitto disconnects their sessions)."""
        now = time.time()
        for device in await self.store.ids():
            ident = await self.store.get(device)
            if ident is None:
                continue
            due = [lg for lg in ident.logins if lg.retire_at is not None and lg.retire_at <= now]
            if not due:
                continue
            for lg in due:
                await self.store.drop_login(lg.username)
            if self.dynsec is not None:
                await self.dynsec.call(
                    [DynsecAdmin.delete_client(lg.username) for lg in due],
                    tolerate=frozenset({"Client not found"}),
                )
            await self.store.remove_logins(device, [lg.username for lg in due])
            if self.kicker is not None:
                await self.kicker.kick(device, {lg.username for lg in due})
            await self._audit("device.login.retired", "ok", device)
            log.info("device %s: retired login(s) %s", device, ", ".join(lg.username for lg in due))

    async def run_retirement(self, stop: asyncio.Event, period: float = 1.0) -> None:
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(period):
                    await stop.wait()
            if stop.is_set():
                return
            try:
                await self.retire_due()
            except Exception as e:  # Redis or the broker away: the next sweep does it
                log.debug("retiring logins: %s", e)

    # ------------------------------------------------------------ grants

    async def prepare(
        self, wave: list[tuple[str, DeployTask]], on_granted: Callable[[list[str]], None] | None = None
    ) -> None:
        """Grant a whole deployment wave at once: every task's grant stored, then one message
        to the broker with the new role of every device concerned (instead of a round trip
        per task, serialised per device). ``before_send`` then has nothing left to do.
        ``on_granted``: told, once the grants are stored (so a NATS login carries them), the
        devices that got NATS channels."""
        statuses = await self.store.statuses(sorted({d for d, _ in wave}))
        grants: list[tuple[str, str, TaskGrant]] = []
        for device, cmd in wave:
            if statuses.get(device) == REVOKED:
                self._prepared[cmd.cmd_id] = Refused(409, f"device {device} is revoked")
                continue
            try:
                grant = TaskGrant(cmd.generation, grants_of(cmd, self.names, (self.mqtt_url, self.nats_url)))
            except GrantRefused as e:
                self._prepared[cmd.cmd_id] = e
                continue
            grants.append((device, task_key(cmd.dataflow, cmd.task), grant))
            self._prepared[cmd.cmd_id] = None
        await self.store.set_grants(grants)
        if on_granted is not None:
            on_granted(sorted({d for d, _, g in grants if any(c.on_nats(self.names) for c in g.channels)}))
        t0 = time.monotonic()
        devices = sorted({d for d, _, _ in grants})
        await self.push_many(devices)
        took = time.monotonic() - t0
        if took > 1.0:  # the broker's dynamic security: O(fleet) per role changed
            n = len(grants)
            log.info("granted the channels of %d tasks on %d devices in %.1f s", n, len(devices), took)

    async def before_send(self, device: str, cmd: DeployTask | StopTask) -> None:
        """Grant a deploy's channels before the command leaves (a revoked device gets nothing)."""
        if not isinstance(cmd, DeployTask):
            return
        if cmd.cmd_id in self._prepared:  # granted with its wave
            refusal = self._prepared.pop(cmd.cmd_id)
            if refusal is not None:
                raise refusal
            return
        ident = await self.store.get(device)
        if ident is not None and ident.status == REVOKED:
            raise Refused(409, f"device {device} is revoked")
        await self.store.set_grant(
            device,
            task_key(cmd.dataflow, cmd.task),
            TaskGrant(cmd.generation, grants_of(cmd, self.names, (self.mqtt_url, self.nats_url))),
        )
        await self.push(device)

    async def after_send(self, device: str, cmd: DeployTask | StopTask) -> None:
        """Withdraw a stopped task's grant (the stop was answered, or it gave up)."""
        if not isinstance(cmd, StopTask):
            return
        if await self.store.drop_grant(device, task_key(cmd.dataflow, cmd.task), cmd.generation):
            await self.push(device)

    async def withdraw(self, device: str, dataflow: str, task: str, generation: int) -> None:
        """A task left ``device`` without a stop it could answer (failover)."""
        if await self.store.drop_grant(device, task_key(dataflow, task), generation):
            await self.push(device)

    async def rights(self, device: str) -> MqttRights:
        return self._rights_from(device, await self.store.grants(device))

    def _rights_from(self, device: str, grants: dict[str, TaskGrant]) -> MqttRights:
        channels = [c for g in grants.values() for c in g.channels if not c.on_nats(self.names)]
        return device_rights(self.names, device, channels)

    async def push_many(self, devices: list[str]) -> None:
        """Bring several devices' roles in line, in messages of ``DYNSEC_CHUNK`` role changes."""
        if self.dynsec is None or not devices:
            return
        locks = [self._locks.setdefault(d, asyncio.Lock()) for d in sorted(set(devices))]
        async with contextlib.AsyncExitStack() as stack:
            for lock in locks:  # sorted: no two waves deadlock
                await stack.enter_async_context(lock)
            grants = await self.store.grants_of_many(sorted(set(devices)))
            wanted = {d: self._rights_from(d, g) for d, g in grants.items()}
            changed = {d: r for d, r in wanted.items() if self._pushed.get(d) != r}
            if not changed:
                return
            # a device without a role (not enrolled through this master) gets nothing
            missing = frozenset({"Role not found", "Role does not exist"})
            items = list(changed.items())
            # Mosquitto's plugin saves its whole configuration after every command (O(fleet)
            # each, ~8-40 ms at 1,000 devices) on the broker's only thread: in chunks, the
            # broker serves its clients (keep-alives, heartbeats) between them
            for start in range(0, len(items), DYNSEC_CHUNK):
                chunk = items[start : start + DYNSEC_CHUNK]
                cmds = [DynsecAdmin.set_role(self.names.device_role(d), r) for d, r in chunk]
                responses = await self.dynsec.call(cmds, tolerate=missing)
                failed = {
                    str(r.get("correlationData", "")).rpartition(":")[2] for r in responses if r.get("error")
                }
                for i, (d, r) in enumerate(chunk):
                    if str(i) not in failed:
                        self._pushed[d] = r

    async def push(self, device: str) -> None:
        """Bring the device's Mosquitto role in line with its grants (one message if it changed)."""
        if self.dynsec is None:
            return
        lock = self._locks.setdefault(device, asyncio.Lock())
        async with lock:
            rights = await self.rights(device)
            if self._pushed.get(device) == rights:
                return
            try:
                await self.dynsec.call([DynsecAdmin.set_role(self.names.device_role(device), rights)])
            except DynsecError as e:
                if "not" not in e.error.lower():
                    raise
                # an unenrolled device (no role): nothing to grant on the broker
                log.debug("device %s has no role: %s", device, e.error)
                return
            self._pushed[device] = rights

    async def nats_subjects(self, device: str) -> list[tuple[str, bool]]:
        """The NATS channels a device's tasks use now: (subject, produce)."""
        grants = await self.store.grants(device)
        return sorted(
            {(c.topic, c.produce) for g in grants.values() for c in g.channels if c.on_nats(self.names)}
        )
