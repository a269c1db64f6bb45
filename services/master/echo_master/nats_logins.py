"""Devices' NATS logins, checked by the auth callout the master serves.

A device connects to NATS with the login it got at enrolment; the server asks the master
(``$SYS.REQ.USER.AUTH``) and the master answers with the permissions of that moment: its
own inbox (``Names.device_inbox``), the data stream and progress bucket looked up, and per
NATS channel of its tasks exactly what the producing or the consuming end does (publish
into the channel's subject / read it through the task's durable consumer; the progress
entry; the resend subject), plus an operator's own subject (``io.nats_*``). A task opens
its NATS connection after its grant, so the permissions of a connection follow the
deployment; a revoked device's logins are refused.
"""

from __future__ import annotations

import logging

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


class DeviceNatsLogins:
    def __init__(self, store: IdentityStore, names: Names) -> None:
        self.store = store
        self.names = names

    async def authorize(self, username: str, password: str, client: ClientInfo) -> NatsPermissions | None:
        device = await self.store.check_nats_login(username, password)
        if device is None:
            return None
        ident = await self.store.get(device)
        if ident is None or ident.status != ENROLLED:
            return None
        grants = [c for g in (await self.store.grants(device)).values() for c in g.channels]
        nats = [c for c in grants if c.on_nats(self.names)]
        return device_permissions(self.names, device, nats)
