"""Every NATS subject, MQTT topic, Redis key and client id, built in one place.

Layout (``ns`` is the namespace, ``echo`` by default):

MQTT, per device — everything a device reads or writes about itself sits under
``{ns}/dev/{device}/`` so a broker ACL can be written per device:

- ``{ns}/dev/{device}/hello``   agent -> registry   registration (retained)
- ``{ns}/dev/{device}/hb``      agent -> registry   heartbeat with utilisation
- ``{ns}/dev/{device}/bye``     agent -> registry   clean shutdown / last will
- ``{ns}/dev/{device}/cmd``     master -> agent     control commands
- ``{ns}/dev/{device}/ack``     agent -> master     command acknowledgements
- ``{ns}/dev/{device}/status``  agent -> master     task state changes
- ``{ns}/dev/{device}/probe``   agent -> nobody     timed for the RTT to the broker

MQTT, data plane — a channel belongs to an edge of a dataflow, not to a device, so a
task that moves keeps its channel (ACLs are granted per dataflow to the devices that
host its tasks):

- ``{ns}/df/{dataflow}/{from_task}/{to_task}``            records (QoS 1)
- ``{ns}/df/{dataflow}/{from_task}/{to_task}/progress``   the consumer's high-water mark
  (retained): the producer may run at most a window of records ahead of it
- ``{ns}/df/{dataflow}/{from_task}/{to_task}/resend``     the consumer asks for records or
  files again from a seq on (it saw a gap, or a file failed its check)

NATS, data plane (work-queue JetStream stream ``{NS}_DATA``): ``{ns}.df.{dataflow}.{from}.{to}``;
its consumer's position is the durable consumer ``{ns}-{dataflow}-{task}-from-{from}``;
progress reports are entries ``{ns}.dfctl.{dataflow}.{from}.{to}.progress`` of the key-value
bucket ``{NS}_PROGRESS``; resend requests go to ``{ns}.dfctl.{dataflow}.{from}.{to}.resend``.

NATS (cloud services):

- ``{ns}.scheduler.validate`` / ``{ns}.scheduler.place``     (queue group ``scheduler``)
- ``{ns}.registry.devices.list`` / ``{ns}.registry.devices.get`` (queue group ``registry``)
- ``{ns}.events.device.{device}.{status}``   device up/down events (JetStream ``{NS}_EVENTS``)
- ``{ns}.events.dataflow.{dataflow}.{state}`` dataflow lifecycle events

Redis:

- ``{ns}:device:{id}`` (JSON) and the set ``{ns}:devices``
- ``{ns}:df:{id}`` (hash: spec, desired, state, ...), the sorted set ``{ns}:dfs`` of all
  and the set ``{ns}:dfs:active`` of those the reconcile loop still works on
- ``{ns}:df:{id}:tasks`` (hash task id -> JSON task record)
"""

from __future__ import annotations

import re
from dataclasses import dataclass

_SAFE = re.compile(r"^[A-Za-z0-9_-]+$")


def _check(part: str, what: str) -> str:
    if not _SAFE.match(part):
        raise ValueError(f"{what} {part!r} may only contain letters, digits, '_' and '-'")
    return part


def overlaps(a: str, b: str, sep: str, one: str, rest: str) -> bool:
    """Whether some topic matches both filters ``a`` and ``b`` (MQTT: "/", "+", "#";
    NATS: ".", "*", ">")."""
    xs, ys = a.split(sep), b.split(sep)
    for x, y in zip(xs, ys, strict=False):
        if x == rest or y == rest:
            return True
        if x != y and one not in (x, y):
            return False
    if len(xs) == len(ys):
        return True
    longer = xs if len(xs) > len(ys) else ys
    # "a/#" also matches "a" (MQTT); NATS ">" needs at least one more token
    return sep == "/" and longer[min(len(xs), len(ys))] == rest


@dataclass(frozen=True)
class Names:
    namespace: str = "echo"

    # --- MQTT: per device -------------------------------------------------------------
    def device_prefix(self, device: str) -> str:
        return f"{self.namespace}/dev/{_check(device, 'device id')}"

    def hello_topic(self, device: str) -> str:
        return f"{self.device_prefix(device)}/hello"

    def heartbeat_topic(self, device: str) -> str:
        return f"{self.device_prefix(device)}/hb"

    def bye_topic(self, device: str) -> str:
        return f"{self.device_prefix(device)}/bye"

    def command_topic(self, device: str) -> str:
        return f"{self.device_prefix(device)}/cmd"

    def ack_topic(self, device: str) -> str:
        return f"{self.device_prefix(device)}/ack"

    def status_topic(self, device: str) -> str:
        return f"{self.device_prefix(device)}/status"

    def probe_topic(self, device: str) -> str:
        """Nobody subscribes: the agent times the broker's PUBACK of a probe (its RTT)."""
        return f"{self.device_prefix(device)}/probe"

    def checkpoint_topic(self, device: str) -> str:
        """Periodic checkpoints of the tasks running on the device (``TaskCheckpoint``)."""
        return f"{self.device_prefix(device)}/ckpt"

    def any_device_topic(self, leaf: str) -> str:
        """Wildcard subscription for one kind of per-device message (``hb``, ``ack``...)."""
        if leaf not in {"hello", "hb", "bye", "cmd", "ack", "status", "probe", "ckpt"}:
            raise ValueError(f"unknown device topic leaf {leaf!r}")
        return f"{self.namespace}/dev/+/{leaf}"

    def device_from_topic(self, topic: str) -> str:
        parts = topic.split("/")
        if len(parts) != 4 or parts[0] != self.namespace or parts[1] != "dev":
            raise ValueError(f"not a device topic: {topic!r}")
        return parts[2]

    # --- MQTT: data plane ---------------------------------------------------------------
    def data_topic(self, dataflow: str, from_task: str, to_task: str) -> str:
        return (
            f"{self.namespace}/df/{_check(dataflow, 'dataflow id')}/"
            f"{_check(from_task, 'task id')}/{_check(to_task, 'task id')}"
        )

    def data_subject(self, dataflow: str, from_task: str, to_task: str) -> str:
        """The NATS (JetStream) subject of a channel: ``{ns}.df.{dataflow}.{from}.{to}``."""
        return (
            f"{self.namespace}.df.{_check(dataflow, 'dataflow id')}."
            f"{_check(from_task, 'task id')}.{_check(to_task, 'task id')}"
        )

    @property
    def data_stream(self) -> str:
        """The JetStream stream holding every NATS channel of this namespace."""
        return f"{self.namespace.upper().replace('-', '_')}_DATA"

    @property
    def data_subjects(self) -> str:
        return f"{self.namespace}.df.>"

    @staticmethod
    def is_subject(channel: str) -> bool:
        """A NATS subject (dots) rather than an MQTT topic (slashes)."""
        return "/" not in channel

    def _control_subject(self, data_subject: str, leaf: str) -> str:
        # outside {ns}.df.> so the data stream does not capture it
        prefix = f"{self.namespace}.df."
        if not data_subject.startswith(prefix):
            raise ValueError(f"not a data subject: {data_subject!r}")
        return f"{self.namespace}.dfctl.{data_subject[len(prefix) :]}.{leaf}"

    def progress_topic(self, data_topic: str) -> str:
        """Where a channel's consumer reports how far it got (retained): the producer's credit."""
        if self.is_subject(data_topic):
            return self._control_subject(data_topic, "progress")
        return f"{data_topic}/progress"

    def resend_topic(self, data_topic: str) -> str:
        """Where a channel's consumer asks for records or files again (a gap, a corrupt file)."""
        if self.is_subject(data_topic):
            return self._control_subject(data_topic, "resend")
        return f"{data_topic}/resend"

    def is_channel_control(self, subject: str) -> bool:
        return subject.startswith(f"{self.namespace}.dfctl.")

    @property
    def progress_bucket(self) -> str:
        """The key-value bucket holding NATS channels' progress reports (MQTT: retained)."""
        return f"{self.namespace.upper().replace('-', '_')}_PROGRESS"

    def progress_key(self, progress_subject: str) -> str:
        return progress_subject

    def consumer_for(self, data_subject: str) -> str:
        """The durable consumer that reads ``data_subject`` for its consuming task."""
        parts = data_subject.split(".")
        if len(parts) != 5 or parts[0] != self.namespace or parts[1] != "df":
            raise ValueError(f"not a data subject: {data_subject!r}")
        _, _, dataflow, from_task, to_task = parts
        return self.consumer_name(dataflow, to_task, from_task)

    def consumer_name(self, dataflow: str, task: str, from_task: str) -> str:
        """The durable JetStream consumer of one input of a task: its position belongs to the task."""
        return f"{self.namespace}-{dataflow}-{task}-from-{from_task}"

    # --- topics and subjects that dataflows' own operators may not use -------------------
    def reserved_topics(self) -> tuple[str, ...]:
        """MQTT filters that are ECHO's own (control and channels): never granted to an operator."""
        return (f"{self.namespace}/dev/#", f"{self.namespace}/df/#", "$CONTROL/#", "$SYS/#")

    def reserved_subjects(self) -> tuple[str, ...]:
        """NATS subjects that are ECHO's own: never granted to an operator."""
        return (f"{self.namespace}.>", "$JS.>", "$KV.>", "$O.>", "$SYS.>", "_INBOX.>")

    def reserved_overlap(self, topic: str, *, nats: bool) -> str | None:
        """The reserved filter an operator's topic (MQTT) or subject (NATS) overlaps, if any."""
        if nats:
            return next((r for r in self.reserved_subjects() if overlaps(topic, r, ".", "*", ">")), None)
        return next((r for r in self.reserved_topics() if overlaps(topic, r, "/", "+", "#")), None)

    def device_inbox(self, device: str) -> str:
        """The NATS inbox prefix of a device: replies (and JetStream deliveries) to it alone."""
        return f"_INBOX_{self.namespace}_{_check(device, 'device id')}"

    # --- MQTT client ids ------------------------------------------------------------------
    def agent_client_id(self, device: str) -> str:
        return f"{self.namespace}-agent-{device}"

    def data_client_id(self, device: str) -> str:
        """The agent's data session: one MQTT connection carrying the channels of all its tasks."""
        return f"{self.namespace}-data-{device}"

    def nats_client_name(self, device: str) -> str:
        """The name of an agent's NATS data connections (one per login, numbered after the first)."""
        return f"{self.namespace}-nats-{device}"

    def task_client_id(self, dataflow: str, task: str) -> str:
        """The MQTT session of a task: named after the task, so its queued input follows it."""
        return f"{self.namespace}-task-{dataflow}-{task}"

    def service_client_id(self, service: str) -> str:
        return f"{self.namespace}-{service}"

    # --- NATS -------------------------------------------------------------------------------
    @property
    def scheduler_validate(self) -> str:
        return f"{self.namespace}.scheduler.validate"

    @property
    def scheduler_place(self) -> str:
        return f"{self.namespace}.scheduler.place"

    @property
    def registry_list(self) -> str:
        return f"{self.namespace}.registry.devices.list"

    @property
    def registry_get(self) -> str:
        return f"{self.namespace}.registry.devices.get"

    @property
    def registry_revoke(self) -> str:
        return f"{self.namespace}.registry.devices.revoke"

    @property
    def migrator_migrate(self) -> str:
        return f"{self.namespace}.migrator.migrate"

    @property
    def migrator_rebalance(self) -> str:
        return f"{self.namespace}.migrator.rebalance"

    @property
    def migrator_get(self) -> str:
        return f"{self.namespace}.migrator.migrations.get"

    @property
    def migrator_list(self) -> str:
        return f"{self.namespace}.migrator.migrations.list"

    @property
    def migrator_decisions(self) -> str:
        return f"{self.namespace}.migrator.decisions"

    @property
    def master_move(self) -> str:
        """The master moves one task (it owns the task records): the migrator's saga steps."""
        return f"{self.namespace}.master.tasks.move"

    @property
    def master_kick(self) -> str:
        """A dataflow id: the leading master's reconciler looks at it now (any replica's API
        writes a change; the leader acts on it)."""
        return f"{self.namespace}.master.kick"

    @property
    def master_tasks(self) -> str:
        """Where the tasks of the active dataflows run (the migrator's view)."""
        return f"{self.namespace}.master.tasks.list"

    @property
    def state_bucket(self) -> str:
        """JetStream object store for operator state too large to keep inline in Redis."""
        return f"{self.namespace.upper().replace('-', '_')}_STATE"

    @property
    def migrator_queue(self) -> str:
        return "migrator"

    @property
    def master_queue(self) -> str:
        return "master"

    def device_event(self, device: str, status: str) -> str:
        return f"{self.namespace}.events.device.{_check(device, 'device id')}.{status}"

    @property
    def device_events_all(self) -> str:
        return f"{self.namespace}.events.device.>"

    def dataflow_event(self, dataflow: str, state: str) -> str:
        return f"{self.namespace}.events.dataflow.{_check(dataflow, 'dataflow id')}.{state}"

    @property
    def events_stream(self) -> str:
        """JetStream stream holding every event, so consumers that restart miss nothing."""
        return f"{self.namespace.upper().replace('-', '_')}_EVENTS"

    @property
    def events_subjects(self) -> str:
        return f"{self.namespace}.events.>"

    @property
    def scheduler_queue(self) -> str:
        return "scheduler"

    @property
    def registry_queue(self) -> str:
        return "registry"

    # --- Redis ------------------------------------------------------------------------------
    def device_key(self, device: str) -> str:
        return f"{self.namespace}:device:{device}"

    @property
    def devices_key(self) -> str:
        return f"{self.namespace}:devices"

    def dataflow_key(self, dataflow: str) -> str:
        return f"{self.namespace}:df:{dataflow}"

    def dataflow_tasks_key(self, dataflow: str) -> str:
        return f"{self.namespace}:df:{dataflow}:tasks"

    @property
    def dataflows_key(self) -> str:
        return f"{self.namespace}:dfs"

    def migration_key(self, migration: str) -> str:
        return f"{self.namespace}:migration:{migration}"

    @property
    def migrations_key(self) -> str:
        """Every migration id, scored by creation time."""
        return f"{self.namespace}:migrations"

    def lease_key(self, service: str) -> str:
        """The leader lease of a service's replicas (``leases``; its fencing counter beside it)."""
        return f"{self.namespace}:lease:{service}"

    @property
    def active_migrations_key(self) -> str:
        """Migrations not finished yet: a restarted migrator resumes them."""
        return f"{self.namespace}:migrations:active"

    @property
    def decisions_key(self) -> str:
        """The rebalancer's decisions, newest first (a capped list)."""
        return f"{self.namespace}:rebalance:decisions"

    def checkpoint_key(self, dataflow: str, task: str) -> str:
        """A task's latest periodic checkpoint (what failover restores from)."""
        return f"{self.namespace}:df:{dataflow}:ckpt:{task}"

    @property
    def active_dataflows_key(self) -> str:
        """Dataflows whose observed state still has to reach the desired one."""
        return f"{self.namespace}:dfs:active"

    # --- Redis: security (owned by the master) -------------------------------------------
    def token_key(self, token_id: str) -> str:
        """An API token's record (hash: role, digest, created, expires, revoked)."""
        return f"{self.namespace}:token:{token_id}"

    @property
    def tokens_key(self) -> str:
        """Every API token id, scored by creation time."""
        return f"{self.namespace}:tokens"

    def token_digest_key(self, digest: str) -> str:
        """SHA-256 of a presented token -> its id (the token itself is never stored)."""
        return f"{self.namespace}:tokendigest:{digest}"

    def console_code_key(self, digest: str) -> str:
        """A one-time console login code (hash: token, role, expires, used), by SHA-256."""
        return f"{self.namespace}:console:code:{digest}"

    def console_session_key(self, digest: str) -> str:
        """A console session (hash: token, role, csrf, expires), by the cookie's SHA-256."""
        return f"{self.namespace}:console:session:{digest}"

    @property
    def events_key(self) -> str:
        """Every event of the platform: a capped Redis stream (``echo_shared.events``)."""
        return f"{self.namespace}:events"

    def dataflow_events_key(self, dataflow: str) -> str:
        """One dataflow's events: a capped Redis stream of its own."""
        return f"{self.namespace}:events:df:{dataflow}"

    @property
    def audit_key(self) -> str:
        """The audit trail: a capped Redis stream of mutating calls."""
        return f"{self.namespace}:audit"

    def enrolment_key(self, digest: str) -> str:
        """A one-time device enrolment token (by SHA-256), with a TTL."""
        return f"{self.namespace}:enrol:{digest}"

    def device_identity_key(self, device: str) -> str:
        """A device's identity: its broker usernames, status (enrolled / revoked), grants."""
        return f"{self.namespace}:identity:{_check(device, 'device id')}"

    @property
    def device_identities_key(self) -> str:
        return f"{self.namespace}:identities"

    def device_grants_key(self, device: str) -> str:
        """What a device's tasks may use: channel -> grant (hash), the source of its broker role."""
        return f"{self.namespace}:identity:{_check(device, 'device id')}:grants"

    def device_connections_key(self, device: str) -> str:
        """A device's recent NATS connections (``server_id cid username``, newest first, capped):
        what a revocation disconnects."""
        return f"{self.namespace}:identity:{_check(device, 'device id')}:conns"

    def device_login_key(self, username: str) -> str:
        """A device's broker login (by username): the device and the password's digest."""
        return f"{self.namespace}:identity:login:{username}"

    # --- broker identities of devices -------------------------------------------------
    def device_username(self, device: str, serial: str) -> str:
        """A device's MQTT/NATS username: one per credential generation (rotation makes a new one)."""
        return f"{self.namespace}.{_check(device, 'device id')}.{_check(serial, 'serial')}"

    def owns_username(self, username: str) -> bool:
        """Whether a broker login is one of this namespace's devices' (``device_username``)."""
        return username.startswith(f"{self.namespace}.")

    @property
    def callout_queue(self) -> str:
        """The queue group of this namespace's NATS auth callouts (the master replicas): each
        namespace sharing a NATS server gets every request, and only the owner answers."""
        return f"echo-auth-{self.namespace}"

    def device_role(self, device: str) -> str:
        """The device's Mosquitto dynamic-security role: its own topics plus its tasks' grants."""
        return f"{self.namespace}.dev.{_check(device, 'device id')}"
