"""Leader leases with fencing on a real Redis: one holder at a time, tokens that only grow, a
paused ex-leader's writes refused, a standby taking over within the TTL plus 0.5 s."""

from __future__ import annotations

import asyncio
import time

import pytest
import redis.asyncio as aioredis

from echo_master.identities import Identity, IdentityStore, Login, TaskGrant
from echo_master.store import DataflowStore
from echo_migrator.sagas import SagaStore
from echo_shared.dynsec import ChannelGrant
from echo_shared.leases import Fenced, Leadership, Lease
from echo_shared.messages import Migration
from echo_shared.models import DataflowState
from echo_shared.names import Names


async def test_one_holder_at_a_time_and_tokens_only_grow(redis: aioredis.Redis, names: Names) -> None:
    key = f"{names.namespace}:lease:a"
    a, b = Lease(redis, key, ttl=0.5), Lease(redis, key, ttl=0.5)
    assert await a.acquire()
    assert not await b.acquire(), "held: nobody else gets it"
    assert await a.renew()
    first = a.token
    deadline = time.monotonic() + 5
    while not await b.acquire():  # a stops renewing (paused): the lease runs out
        assert time.monotonic() < deadline, "the lease never expired"
        await asyncio.sleep(0.05)
    assert b.token > first
    assert not await a.renew(), "the ex-holder cannot renew what another holds"
    assert not a.held
    await b.release()
    assert await a.acquire() and a.token > b.token


async def test_a_restarted_replica_takes_its_own_lease_back_at_once(
    redis: aioredis.Redis, names: Names
) -> None:
    key = f"{names.namespace}:lease:c"
    before = Lease(redis, key, ttl=30, owner="registry-2")
    assert await before.acquire()
    after = Lease(redis, key, ttl=30, owner="registry-2")  # the same replica, started again
    other = Lease(redis, key, ttl=30, owner="registry-3")
    assert not await other.acquire()
    assert await after.acquire() and after.token > before.token
    assert not await before.renew(), "the dead process's value is gone: it is fenced"


async def test_a_paused_ex_leaders_saga_writes_are_refused(redis: aioredis.Redis, names: Names) -> None:
    key = names.lease_key("migrator")
    old, new = Lease(redis, key, ttl=0.3), Lease(redis, key, ttl=5)
    assert await old.acquire()
    m = Migration(id="mig-1", dataflow="df", task="t", origin="api")
    old_store = SagaStore(redis, names, old)
    await old_store.create(m)
    deadline = time.monotonic() + 5
    while not await new.acquire():
        assert time.monotonic() < deadline
        await asyncio.sleep(0.05)
    m2 = await SagaStore(redis, names, new).get("mig-1")
    assert m2 is not None
    m2.state = "running"
    await SagaStore(redis, names, new).save(m2)
    # the old leader wakes up believing it still leads (it never heard otherwise)
    m.state = "failed"
    with pytest.raises(Fenced):
        await old_store.save(m)
    got = await SagaStore(redis, names).get("mig-1")
    assert got is not None and got.state == "running", "the new leader's record stands"


async def test_a_standby_takes_over_within_the_ttl_and_half_a_second(
    redis: aioredis.Redis, names: Names
) -> None:
    key = f"{names.namespace}:lease:b"
    ttl = 1.5
    leading: list[str] = []
    stop_a, stop_b = asyncio.Event(), asyncio.Event()

    def body(name: str) -> object:
        async def run() -> None:
            leading.append(name)
            await asyncio.Event().wait()  # the singleton loops, until cancelled

        return run

    la, lb = Leadership(Lease(redis, key, ttl=ttl), "a"), Leadership(Lease(redis, key, ttl=ttl), "b")
    ta = asyncio.create_task(la.run(stop_a, body("a")))  # type: ignore[arg-type]
    await asyncio.wait_for(la.elected.wait(), 5)
    tb = asyncio.create_task(lb.run(stop_b, body("b")))  # type: ignore[arg-type]
    deadline = time.monotonic() + 5
    while lb.attempts < 3:  # b has tried, and found the lease held
        assert time.monotonic() < deadline
        await asyncio.sleep(0.05)
    assert leading == ["a"] and not lb.elected.is_set(), "one leader at a time"
    # a dies without a word (kill -9): its loop ends, the lease is left to run out
    ta.cancel()
    await asyncio.gather(ta, return_exceptions=True)
    await redis.pexpire(key, int(ttl * 1000))  # as if its last renewal had just been made
    t0 = time.monotonic()
    await asyncio.wait_for(lb.elected.wait(), ttl + 2)
    took = time.monotonic() - t0
    assert leading[-1] == "b"
    assert took <= ttl + 0.5 + 0.2, f"takeover took {took:.2f} s"
    stop_b.set()
    await asyncio.wait_for(tb, 5)
    assert await redis.get(key) is None, "a leader that stops releases the lease"


class SwallowingLease(Lease):
    """A lease whose renewal swallows a cancel, as a library cut short may: it finishes the
    call and returns as if nothing happened."""

    renewing = asyncio.Event()

    async def renew(self) -> bool:
        self.renewing.set()
        try:
            await asyncio.sleep(0.3)
        except asyncio.CancelledError:
            pass
        return await super().renew()


async def test_a_cancel_swallowed_by_an_awaited_call_still_ends_the_leadership(
    redis: aioredis.Redis, names: Names
) -> None:
    """Seen: a master whose API port was taken never exited, its leadership cancelled in the
    middle of a Redis call that swallowed the cancel. The replica honours the cancel on its
    next turn: its loops stop and the lease is released."""
    lease = SwallowingLease(redis, f"{names.namespace}:lease:swallow", ttl=1.5)
    runner = asyncio.create_task(Leadership(lease, "swallow").run(asyncio.Event(), asyncio.Event().wait))
    async with asyncio.timeout(5):
        await lease.renewing.wait()  # leading, in the middle of a renewal
    runner.cancel()
    async with asyncio.timeout(3):
        with pytest.raises(asyncio.CancelledError):
            await runner
    assert not lease.held
    assert await redis.get(lease.key) is None, "the lease was not released"


async def test_a_paused_ex_master_leaders_writes_are_refused(redis: aioredis.Redis, names: Names) -> None:
    """The master's leader writes observed state, task records and device grants through
    scripts that check its lease first: once another replica leads, a paused ex-leader's
    writes are refused (``Fenced``) and change nothing; the new leader's go through."""
    key = names.lease_key("master")
    old, new = Lease(redis, key, ttl=0.3), Lease(redis, key, ttl=5)
    assert await old.acquire()
    grant = TaskGrant(1, (ChannelGrant("echo/ch/df/a-b", produce=True),))
    old_df, old_ids = DataflowStore(redis, names, old), IdentityStore(redis, names, old)
    await old_df.set_state("df-1", DataflowState.deploying)
    await old_ids.set_grant("fog-1", "df-1/a", grant)
    deadline = time.monotonic() + 5
    while not await new.acquire():
        assert time.monotonic() < deadline
        await asyncio.sleep(0.05)
    old.value = f"{old.token}:{old.owner}"  # paused: it still believes it holds the lease
    with pytest.raises(Fenced):
        await old_df.set_state("df-1", DataflowState.failed, "a stale leader's verdict")
    old.value = f"{old.token}:{old.owner}"
    with pytest.raises(Fenced):
        await old_ids.set_grant("fog-2", "df-1/a", grant)
    old.value = f"{old.token}:{old.owner}"
    with pytest.raises(Fenced):
        await old_ids.drop_grant("fog-1", "df-1/a", 1)
    assert await redis.hget(names.dataflow_key("df-1"), "state") == "deploying"
    assert await IdentityStore(redis, names).grants("fog-2") == {}
    assert "df-1/a" in await IdentityStore(redis, names).grants("fog-1")
    # the new leader acts; a newer generation's grant is not withdrawn by an older stop
    new_ids = IdentityStore(redis, names, new)
    await DataflowStore(redis, names, new).set_state("df-1", DataflowState.running)
    await new_ids.set_grant("fog-1", "df-1/a", TaskGrant(2, grant.channels))
    assert not await new_ids.drop_grant("fog-1", "df-1/a", 1)
    assert await new_ids.drop_grant("fog-1", "df-1/a", 2)
    assert await redis.hget(names.dataflow_key("df-1"), "state") == "running"


async def test_retiring_logins_keeps_a_revocation_made_meanwhile(redis: aioredis.Redis, names: Names) -> None:
    """The leader's retirement sweep takes old logins off an identity without writing the rest
    of it back: a revocation another replica's API made after the sweep read the identity
    stays (a whole-record write had set the device back to enrolled)."""
    lease = Lease(redis, names.lease_key("master"), ttl=5)
    assert await lease.acquire()
    store = IdentityStore(redis, names, lease)
    old, new = Login("dev-fog-1-a", retire_at=1.0), Login("dev-fog-1-b")
    assert await store.create(Identity("fog-1", "fog", "enrolled", 1.0, False, [old, new]))
    read_by_sweep = await store.get("fog-1")
    assert read_by_sweep is not None
    api = IdentityStore(redis, names)  # the other replica's API revokes the device meanwhile
    revoked = await api.get("fog-1")
    assert revoked is not None
    revoked.status = "revoked"
    await api.save(revoked)
    await store.remove_logins("fog-1", [old.username])
    after = await api.get("fog-1")
    assert after is not None and after.status == "revoked"
    assert [lg.username for lg in after.logins] == [new.username]
    await store.remove_logins("fog-1", [new.username])
    after = await api.get("fog-1")
    assert after is not None and after.logins == []
