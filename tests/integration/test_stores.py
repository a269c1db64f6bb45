"""Redis-backed state: compare-and-set device transitions and fenced task patches."""

from __future__ import annotations

import redis.asyncio as aioredis

from echo_master.store import DataflowStore
from echo_registry.errors import UnknownDevice
from echo_registry.store import Beat, DeviceStore
from echo_shared.models import Capacity, DataflowSpec, DeviceInfo, DeviceStatus, Tier
from echo_shared.names import Names


async def test_device_transitions_are_compare_and_set(redis: aioredis.Redis, names: Names) -> None:
    store = DeviceStore(redis, names)
    info = DeviceInfo(id="d1", tier=Tier.edge, capacity=Capacity(cpu=1, memory_mb=64))
    assert await store.register(info, "boot", 100.0) == (None, None)
    raw = await store.raw("d1")
    # a heartbeat lands between the sweep's read and its write: the sweep's write must fail
    await store.heartbeat("d1", 101.0, 5.0, 6.0, 0)
    assert (
        await store.transition(
            "d1",
            DeviceStatus.unreachable,
            102.0,
            expect=DeviceStatus.online,
            expect_heartbeat=raw["last_heartbeat"],
        )
        is None
    )
    assert (await store.get("d1")).status is DeviceStatus.online
    # without a race it succeeds, once
    raw = await store.raw("d1")
    assert (
        await store.transition(
            "d1",
            DeviceStatus.unreachable,
            103.0,
            expect=DeviceStatus.online,
            expect_heartbeat=raw["last_heartbeat"],
        )
        is DeviceStatus.online
    )
    assert await store.transition("d1", DeviceStatus.unreachable, 103.0) is None
    # a heartbeat brings it back and reports where it came from
    assert await store.heartbeat("d1", 104.0, 1.0, 2.0, 3) is DeviceStatus.unreachable
    rec = await store.get("d1")
    assert (rec.status, rec.tasks, rec.cpu_percent) == (DeviceStatus.online, 3, 1.0)


async def test_heartbeats_are_stored_together_each_with_its_own_outcome(
    redis: aioredis.Redis, names: Names
) -> None:
    store = DeviceStore(redis, names)
    for d in ("on", "away", "gone"):
        await store.register(
            DeviceInfo(id=d, tier=Tier.edge, capacity=Capacity(cpu=1, memory_mb=64)), "b", 1.0
        )
    await store.transition("away", DeviceStatus.unreachable, 2.0)
    assert await store.revoke("gone", 2.0) is DeviceStatus.online
    out = await store.heartbeats(
        [
            Beat("on", 3.0, 10.0, 20.0, 1, {"mqtt": 2.5}),
            Beat("away", 3.0, 11.0, 21.0, 2),
            Beat("gone", 3.0, 12.0, 22.0, 3),
            Beat("never-registered", 3.0, 0.0, 0.0, 0),
        ]
    )
    assert out[:3] == [None, DeviceStatus.unreachable, None]  # only "away" came back
    assert isinstance(out[3], UnknownDevice)
    on, away, gone = [await store.get(d) for d in ("on", "away", "gone")]
    assert (on.status, on.tasks, on.cpu_percent, on.rtt_ms) == (DeviceStatus.online, 1, 10.0, {"mqtt": 2.5})
    assert (away.status, away.status_since, away.tasks) == (DeviceStatus.online, 3.0, 2)
    assert gone.status is DeviceStatus.revoked  # a revoked device stays revoked
    assert await redis.exists(names.device_key("never-registered")) == 0


async def test_the_device_list_is_read_page_by_page_in_id_order(redis: aioredis.Redis, names: Names) -> None:
    store = DeviceStore(redis, names)
    ids = [f"d{i:03d}" for i in range(7)]
    for d in reversed(ids):
        info = DeviceInfo(id=d, tier=Tier.edge, capacity=Capacity(cpu=1, memory_mb=64))
        await store.register(info, "b", 1.0)
    pages, after = [], ""
    while True:
        rows, after = await store.page(after, 3)
        pages.append([rec.id for rec, _ in rows])
        if not after:
            break
    assert pages == [ids[0:3], ids[3:6], ids[6:7]]
    rows, after = await store.page("", 7)
    assert (len(rows), after) == (7, "")  # exactly one page: nothing to continue after


async def test_task_patches_are_fenced_and_never_go_backwards(redis: aioredis.Redis, names: Names) -> None:
    store = DataflowStore(redis, names)
    spec = DataflowSpec.model_validate({"name": "x", "tasks": [{"id": "g", "operator": "io.generate"}]})
    df_id = await store.create(spec)
    assert await store.patch_task(df_id, "g", {"generation": 2, "state": "deploying"}) is not None
    # a report from generation 1 is ignored
    assert await store.patch_task(df_id, "g", {"state": "failed"}, generation=1, forward_only=True) is None
    rec = await store.patch_task(
        df_id, "g", {"state": "finished", "records_out": 7}, generation=2, forward_only=True
    )
    assert rec is not None and rec.state.value == "finished"
    # a late "running" ack does not undo "finished", but its other fields apply
    rec = await store.patch_task(
        df_id, "g", {"state": "running", "records_out": 9}, generation=2, forward_only=True
    )
    assert rec is not None and rec.state.value == "finished" and rec.records_out == 9
    # the master itself may move a task back (a redeploy)
    rec = await store.patch_task(df_id, "g", {"state": "deploying"}, generation=2)
    assert rec is not None and rec.state.value == "deploying"
