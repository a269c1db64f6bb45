"""Shared NATS logins against a real nats-server and auth callout (``echo_agent.dataplane.natslink``).

The callout answers with the device's permissions of the moment (as the master computes
them, ``device_permissions``): the tasks of a wave share the login begun ahead of it, and a
task whose grant came later gets a login of its own, which carries its channel where the
older login does not.
"""

from __future__ import annotations

import asyncio
import secrets

import nats.errors
import pytest

from echo_agent.dataplane import natslink
from echo_agent.dataplane.natschannels import NatsChannels
from echo_agent.dataplane.natslink import NatsLogins
from echo_master.nats_logins import device_permissions
from echo_shared.dynsec import ChannelGrant
from echo_shared.names import Names
from echo_shared.nats_bus import ensure_data_plane
from echo_shared.natsauth import AuthCallout, NatsPermissions
from tests.harness.waiting import eventually
from tests.integration.nats_auth_server import Devices, Server

NAMES = Names("t1")
DEVICE = "dev-1"


def granted(*subjects: str) -> NatsPermissions:
    return device_permissions(NAMES, DEVICE, [ChannelGrant(s, produce=True) for s in subjects])


async def test_a_wave_shares_one_login_and_a_later_grant_gets_a_login_that_carries_it(
    server: Server, devices: Devices, callout: AuthCallout, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(natslink, "AHEAD_HELD", 0.2)
    admin = await server.login("admin")
    ajs = admin.jetstream(timeout=5)
    await ensure_data_plane(ajs, NAMES)
    first, later = NAMES.data_subject("df-1", "a", "b"), NAMES.data_subject("df-1", "c", "d")
    password = secrets.token_urlsafe(16)
    devices.entries[DEVICE] = (password, granted(first))
    options = {
        "user": DEVICE,
        "password": password,
        "inbox_prefix": NAMES.device_inbox(DEVICE),
        **server.tls_options(),
    }
    pool = NatsLogins(server.url, NAMES, f"t1-nats-{DEVICE}", options)
    loop = asyncio.get_running_loop()

    def task(name: str, since: float, cmd_id: str | None = None) -> NatsChannels:
        return NatsChannels(pool, NAMES, name, lambda m: None, since=since, cmd_id=cmd_id)

    # the wave's grants are stored, the device told: one login, begun before its commands come
    pool.ahead(["cmd-a", "cmd-b"])
    t1, t2 = task("t1-a", loop.time(), "cmd-a"), task("t1-b", loop.time(), "cmd-b")
    await asyncio.gather(t1.start(), t2.start())
    assert pool.logins == 1 and len(devices.calls) == 1
    await asyncio.wait_for(t1.publish(first, b"r1"), 10)  # (a refused publish is retried for ever)
    # a later grant; its task's command arrives after it: a new login, through the callout again
    devices.entries[DEVICE] = (password, granted(first, later))
    t3 = task("t1-c", loop.time())
    await t3.start()
    assert pool.logins == 2 and len(devices.calls) == 2
    await asyncio.wait_for(t3.publish(later, b"r2"), 10)
    # the wave's login was fixed before that grant: the server drops its publish to the new channel
    assert t1._link is not None and t1._link.js is not None
    with pytest.raises(nats.errors.TimeoutError):
        await t1._link.js.publish(later, b"not granted to this login", stream=NAMES.data_stream, timeout=1)
    info = await ajs.stream_info(NAMES.data_stream)
    assert info.state.messages == 2

    # the last task out closes a login (the one begun ahead once its hold is over)
    await t3.close()
    await asyncio.gather(t1.close(), t2.close())
    await eventually(lambda: not pool.links, timeout=5, what="every login closed")
