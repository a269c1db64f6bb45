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
    is_closed = False
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
    pool.ahead(["c1", "c2"])
    [ahead] = pool.links
    after = loop.time() + 1.0  # commands that arrived after the login began
    a = await pool.acquire(User(), since=after, cmd_id="c1")
    b = await pool.acquire(User(), since=after, cmd_id="c2")
    assert a is b is ahead and pool.logins == 1
    # a command it was not begun for, arriving after it began: a login of its own
    other = await pool.acquire(User(), since=after, cmd_id="c3")
    assert other is not ahead and pool.logins == 2
    pool.ahead(["c1", "c2"])  # a repeated notice begins nothing
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
    pool.ahead(["c1", "c2"])
    user = User()
    link = await pool.acquire(user, since=0.0, cmd_id="c1")
    await pool.release(link, user)
    assert not link.closing  # held: more of its wave may come
    await eventually(lambda: link.closing and link not in pool.links, timeout=5, what="the held login closed")
    # once closed, a command it was begun for that comes late gets a login of its own
    late = await pool.acquire(User(), since=asyncio.get_running_loop().time(), cmd_id="c2")
    assert late is not link and not late.closing


async def test_a_task_joining_as_the_hold_ends_keeps_its_login(
    started: list[NatsLink], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The hold ends with nobody on the login: it is retired at once, so a task joining in
    the same moment begins another instead of getting one that is about to close."""
    monkeypatch.setattr(natslink, "AHEAD_HELD", 0.0)
    pool = logins()
    pool.ahead(["c1"])
    [ahead] = pool.links
    for _ in range(1000):  # loop turns, not time: the check below is in the hold's own turn
        if not ahead.held:
            break
        await asyncio.sleep(0)
    assert not ahead.held
    assert ahead.closing and ahead not in pool.links  # retired in the same turn
    link = await pool.acquire(User(), since=0.0, cmd_id="c1")
    assert link is not ahead and not link.closing and link.connected


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


async def test_closing_the_pool_closes_every_login_even_one_still_connecting(
    started: list[NatsLink],
) -> None:
    pool = logins()
    link = await pool.acquire(User(), since=asyncio.get_running_loop().time() + 1)
    pool.ahead(["c1"])  # begun, not connected yet
    connecting = [x for x in pool.links if x is not link]
    await pool.close()
    assert not pool.links and link.closing and link.nc is None
    assert all(x.closing and x.nc is None for x in connecting)


async def test_a_login_being_replaced_is_not_joined(started: list[NatsLink]) -> None:
    pool = logins()
    link = await pool.acquire(User(), since=0.0)
    link.nc.is_closed = True  # type: ignore[union-attr]  # the server closed it for good
    other = await pool.acquire(User(), since=0.0)
    assert other is not link


async def test_a_new_connection_subscribes_every_task_again_until_each_has(
    started: list[NatsLink], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(natslink.Backoff, "next", lambda self: 0.0)

    class Flaky(User):
        def __init__(self, failures: int) -> None:
            self.failures, self.calls = failures, 0

        async def relinked(self) -> None:
            self.calls += 1
            if self.calls <= self.failures:
                raise OSError("JetStream not ready")

    pool = logins()
    steady, flaky = Flaky(0), Flaky(2)
    link = await pool.acquire(steady, since=0.0)
    await pool.acquire(flaky, since=0.0)
    await link._reopen()
    assert steady.calls == 1 and flaky.calls == 3
