"""Large states in the master's object store on a real NATS (JetStream): a state in slices
kept as it came (from a message's parts, never joined) and read back in its chunks."""

from __future__ import annotations

import time
import uuid

from echo_cli.devstack import Brokers
from echo_master.agents_link import read_checkpoint
from echo_master.snapshots import SnapshotStore
from echo_shared import stateslices
from echo_shared.messages import TaskCheckpoint, TaskSnapshot, state_pieces
from echo_shared.names import Names
from echo_shared.nats_bus import NatsBus


async def test_a_state_in_slices_is_kept_as_it_came_and_read_back_in_chunks(brokers: Brokers) -> None:
    names = Names(f"t{uuid.uuid4().hex[:6]}")
    state = {"counts": {f"key-{i:07d}-" + "x" * 80: i for i in range(300_000)}, "n": 1}  # ~30 MB
    pieces = await stateslices.dump_pieces(state)
    ckpt = TaskCheckpoint(
        device="fog-1", dataflow="df", task="count", generation=1, snapshot=TaskSnapshot(taken_at=1.0), ts=1.0
    )
    payload = state_pieces(ckpt, pieces)
    whole = b"".join(payload)
    parts = [whole[i : i + 16 * 2**20] for i in range(0, len(whole), 16 * 2**20)]  # as MQTT parts
    got = read_checkpoint(parts)
    raw = got.snapshot.state
    assert isinstance(raw, stateslices.RawState) and len(raw) == sum(map(len, pieces))
    async with NatsBus(brokers.nats_url, "test", access=brokers.access()) as bus:
        snaps = SnapshotStore(bus, names, inline_max=256 * 1024)
        t0 = time.monotonic()
        kept = await snaps.offload({"state": raw}, "df.count.1.ckpt.1000")
        put_s = time.monotonic() - t0
        assert kept["state"] == {"$object": "df.count.1.ckpt.1000", "bytes": len(raw)}
        chunks, delta = await snaps.raw("df.count.1.ckpt.1000")
        assert delta is None and b"".join(chunks) == b"".join(pieces)
        assert max(map(len, chunks)) <= 512 * 1024
        assert await snaps.load("df.count.1.ckpt.1000") == state  # a failover's read: the state
        await snaps.delete("df.count.1.ckpt.1000")
    # the put is a stream of chunks on the loop, not a thread hop per chunk (4 s per 100 MB)
    assert put_s < 10.0, f"{len(raw)} bytes put in {put_s:.1f}s"
