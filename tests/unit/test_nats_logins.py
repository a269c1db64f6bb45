"""The agent's NATS logins (``echo_agent.dataplane.natslink``): which task may share which.

A login carries the device's permissions of the moment it began, so a task may use one
only if it began after the task's grant: after the task's command arrived, or ahead of its
deployment wave (``LoginAhead``). Logins are faked here (no server); the rule against a
real nats-server and auth callout is in ``tests/integration/test_nats_logins.py``.
"""

from __future__ import annotations

import asyncio

import pytest

from echo_agent.dataplane import natslink
from echo_agent.dataplane.natslink import NatsLink, NatsLogins, NatsUnavailable
from echo_shared.names import Names
from tests.harness.waiting import eventually


class User:
    async def reconnected(self) -> None:
        pass

    async def relinked(self) -> None:
        pass


class FakeConnection:
    is_connected = True
    options: dict[str, str] = {}

    async def close(self) -> None:
        pass


@pytest.fixture
def started(monkeypatch: pytest.MonkeyPatch) -> list[NatsLink]:
    """Logins that connect at once (a list of those begun); a login whose options carry
    ``fail`` is refused."""
    begun: list[NatsLink] = []

    async def start(self: NatsLink, timeout: float = 10.0) -> None:
        begun.append(self)
        await asyncio.sleep(0)
        if self.options.get("fail"):
            raise NatsUnavailable("refused")
        self.nc = FakeConnection()  # type: ignore[assignment]

    monkeypatch.setattr(NatsLink, "start", start)
    return begun


def logins(**options: str) -> NatsLogins:
    return NatsLogins("nats://127.0.0.1:4222", Names("t"), "t-nats-dev", options)


async def test_tasks_whose_commands_came_before_a_login_began_share_it(started: list[NatsLink]) -> None:
    pool = logins()
    now = asyncio.get_running_loop().time()
    a, b = User(), User()
    first = await pool.acquire(a, since=now)
    second = await pool.acquire(b, since=now)
    assert first is second and pool.logins == 1 and first.users == {a, b}


async def test_a_command_after_the_newest_login_began_gets_a_login_of_its_own(
    started: list[NatsLink],
) -> None:
    pool = logins()
    loop = asyncio.get_running_loop()
    old = await pool.acquire(User(), since=loop.time())
    later = old.began + 1e-6  # its grant may be newer than what the first login carries
    new = await pool.acquire(User(), since=later)
    assert new is not old and pool.logins == 2 and new.began >= old.began
    assert pool.links == {old, new}


async def test_a_wave_shares_the_login_begun_ahead_of_it_whenever_its_commands_come(
    started: list[NatsLink],
) -> None:
    pool = logins()
    loop = asyncio.get_running_loop()
    pool.ahead("w1")
    [ahead] = pool.links
    after = loop.time() + 1.0  # commands that arrived after the login began
    a = await pool.acquire(User(), since=after, wave="w1")
    b = await pool.acquire(User(), since=after, wave="w1")
    assert a is b is ahead and pool.logins == 1
    # another wave's task, or one without a wave, arriving after it began: a login of its own
    other = await pool.acquire(User(), since=after, wave="w2")
    assert other is not ahead and pool.logins == 2
    pool.ahead("w1")  # a repeated notice begins nothing
    assert pool.logins == 2


async def test_the_last_task_out_closes_a_login(started: list[NatsLink]) -> None:
    pool = logins()
    now = asyncio.get_running_loop().time()
    a, b = User(), User()
    link = await pool.acquire(a, since=now)
    await pool.acquire(b, since=now)
    await pool.release(link, a)
    assert link in pool.links and not link.closing
    await pool.release(link, b)
    assert link not in pool.links and link.closing
    # the next task begins a new one
    assert await pool.acquire(User(), since=now) is not link


async def test_a_login_begun_ahead_is_held_for_its_wave_then_closed_unused(
    started: list[NatsLink], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(natslink, "AHEAD_HELD", 0.05)
    pool = logins()
    pool.ahead("w1")
    user = User()
    link = await pool.acquire(user, since=0.0, wave="w1")
    await pool.release(link, user)
    assert not link.closing  # held: more of its wave may come
    await eventually(lambda: link.closing and link not in pool.links, timeout=5, what="the held login closed")


async def test_a_refused_login_fails_its_tasks_and_is_not_reused(started: list[NatsLink]) -> None:
    pool = logins(fail="yes")
    now = asyncio.get_running_loop().time()
    with pytest.raises(NatsUnavailable):
        await pool.acquire(User(), since=now)
    assert not pool.links
    pool._options.pop("fail")
    link = await pool.acquire(User(), since=now)
    assert link.connected and pool.logins == 2


async def test_new_credentials_reach_every_login_and_the_next_ones(started: list[NatsLink]) -> None:
    pool = logins(user="u1", password="p1")
    link = await pool.acquire(User(), since=0.0)
    pool.relogin("u2", "p2")
    assert link.options["user"] == "u2" and link.options["password"] == "p2"
    later = await pool.acquire(User(), since=asyncio.get_running_loop().time() + 1)
    assert later.options["user"] == "u2"


async def test_closing_the_pool_closes_every_login(started: list[NatsLink]) -> None:
    pool = logins()
    pool.ahead("w1")
    link = await pool.acquire(User(), since=asyncio.get_running_loop().time() + 1)
    await pool.close()
    assert not pool.links and link.closing and all(x.closing for x in started)
