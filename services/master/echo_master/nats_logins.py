"""Devices' NATS logins, checked by the auth callout the master serves.

A device connects to NATS with the login it got at enrolment; the server asks the master
(``$SYS.REQ.USER.AUTH``) and the master answers with the permissions of that moment: its
own inbox (``Names.device_inbox``), the data stream and progress bucket looked up, and per
NATS channel of its tasks exactly what the producing or the consuming end does (publish
into the channel's subject / read it through the task's durable consumer; the progress
entry; the resend subject), plus an operator's own subject (``io.nats_*``). A task uses a
NATS login begun after its grant (the agent's ``dataplane/natslink``; ``LoginAhead`` tells a
device a wave's grants are stored), so the permissions of a connection follow the
deployment; a revoked device's logins are refused.
"""

from __future__ import annotations

import contextlib
import json
import logging

from nats.aio.client import Client as NatsClient

from echo_shared.dynsec import ChannelGrant
from echo_shared.names import Names
from echo_shared.natsauth import (
    ClientInfo,
    NatsPermissions,
    inbox_permissions,
    js_consumer_permissions,
    js_publish_permissions,
    js_stream_permissions,
    kv_permissions,
)

from .identities import ENROLLED, IdentityStore

log = logging.getLogger(__name__)


def device_permissions(names: Names, device: str, grants: list[ChannelGrant]) -> NatsPermissions:
    inbox = names.device_inbox(device)
    parts = [
        inbox_permissions(inbox),
        js_stream_permissions(names.data_stream, inbox=inbox),
        kv_permissions(names.progress_bucket, keys=(), inbox=inbox),
    ]
    for g in grants:
        if g.app:  # an operator's own subject: plain publish or subscribe
            parts.append(
                NatsPermissions(pub_allow=(g.topic,)) if g.produce else NatsPermissions(sub_allow=(g.topic,))
            )
            continue
        progress = names.progress_key(names.progress_topic(g.topic))
        resend = names.resend_topic(g.topic)
        if g.produce:
            parts += [
                js_publish_permissions((g.topic,), inbox=inbox),
                kv_permissions(names.progress_bucket, keys=(progress,), read=True, watch=True, inbox=inbox),
                NatsPermissions(sub_allow=(resend,)),
            ]
        else:
            parts += [
                js_consumer_permissions(
                    names.data_stream, names.consumer_for(g.topic), g.topic, delete=True, inbox=inbox
                ),
                kv_permissions(names.progress_bucket, keys=(progress,), write=True, inbox=inbox),
                NatsPermissions(pub_allow=(resend,)),
            ]
    return NatsPermissions.union(*parts)


RECENT_CONNECTIONS = 256  # per device: what a revocation disconnects (older ones closed long ago)
KICK_TIMEOUT = 2.0


class DeviceNatsLogins:
    def __init__(self, store: IdentityStore, names: Names) -> None:
        self.store = store
        self.names = names

    async def authorize(self, username: str, password: str, client: ClientInfo) -> NatsPermissions | None:
        """Two round trips to Redis: the login, then the device's status and grants (and the
        connection remembered) together; the callout is on every task's connect path."""
        device = await self.store.check_nats_login(username, password)
        if device is None:
            return None
        conn = f"{client.server_id} {client.cid} {username}" if client.cid is not None else None
        status, grants = await self.store.status_and_grants(
            device,
            remember=(self.names.device_connections_key(device), conn, RECENT_CONNECTIONS) if conn else None,
        )
        if status != ENROLLED:
            return None
        nats = [c for g in grants.values() for c in g.channels if c.on_nats(self.names)]
        return device_permissions(self.names, device, nats)


class NatsKicker:
    """Disconnects devices' NATS connections (a login in NATS' system account: ``KICK``).

    The callout checks a login only when a connection opens: a revoked device's open
    connections, or those of a retired login, are ended here; they cannot come back."""

    def __init__(self, nc: NatsClient, store: IdentityStore, names: Names) -> None:
        self.nc = nc
        self.store = store
        self.names = names

    async def kick(self, device: str, usernames: set[str] | None = None) -> int:
        """Disconnect the device's connections (only those of ``usernames`` if given)."""
        key = self.names.device_connections_key(device)
        entries = [str(e) for e in await self.store.r.lrange(key, 0, -1)]
        kicked = 0
        for entry in entries:
            server_id, cid, username = entry.split(" ", 2)
            if usernames is not None and username not in usernames:
                continue
            try:
                await self.nc.request(
                    f"$SYS.REQ.SERVER.{server_id}.KICK",
                    json.dumps({"cid": int(cid)}).encode(),
                    timeout=KICK_TIMEOUT,
                )
                kicked += 1
            except Exception as e:  # that server or connection is gone already
                log.debug("kick of %s (cid %s on %s): %s", device, cid, server_id, e)
            if usernames is not None:
                await self.store.r.lrem(key, 0, entry)
        if usernames is None:
            await self.store.r.delete(key)
        return kicked

    async def close(self) -> None:
        with contextlib.suppress(Exception):
            await self.nc.close()
