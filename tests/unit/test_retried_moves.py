"""Asking again is safe: a request whose connection dropped fails at once, a move step asked
again joins the one under way, and a drained copy's messages resent by its successor are
the successor's own."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any

import orjson
import pytest

from echo_master.moving import TaskMover
from echo_shared.codec import BadDataMessage, decode, encode_records, restamp
from echo_shared.errors import RequestTimeout
from echo_shared.messages import MoveTaskReply, MoveTaskRequest
from echo_shared.nats_bus import NatsBus


class SilentNats:
    """A connection whose requests are never answered."""

    def __init__(self) -> None:
        self.asked = asyncio.Event()
        self.never = asyncio.Event()  # no answer comes

    async def request(self, subject: str, data: bytes, timeout: float, headers: Any = None) -> Any:
        self.asked.set()
        await self.never.wait()


async def test_a_request_fails_at_once_when_the_connection_drops() -> None:
    bus = NatsBus("nats://unused:4222", "t")
    nc = SilentNats()
    bus._nc = nc  # type: ignore[assignment]
    waiting = asyncio.create_task(bus._request("x.move", b"{}", timeout=3600))
    await nc.asked.wait()
    bus._on_disconnect()
    with pytest.raises(RequestTimeout, match="connection to NATS dropped"):
        await asyncio.wait_for(waiting, 5)
    # the next request waits for its own answer again
    later = asyncio.create_task(bus._request("x.move", b"{}", timeout=3600))
    await asyncio.sleep(0)
    assert not later.done()
    later.cancel()


def req(migration: str = "mig-1", target: str = "fog-2") -> MoveTaskRequest:
    return MoveTaskRequest(
        dataflow="df-1", task="count", target=target, expected_generation=1, migration=migration, mode="drain"
    )


async def test_a_move_asked_again_joins_the_one_under_way(monkeypatch: pytest.MonkeyPatch) -> None:
    leader = SimpleNamespace(leading=lambda: True)  # only whether this replica leads is asked
    mover = TaskMover(store=None, reconciler=leader)  # type: ignore[arg-type]
    release = asyncio.Event()
    calls: list[MoveTaskRequest] = []

    async def slow_move(r: MoveTaskRequest) -> MoveTaskReply:
        calls.append(r)
        await release.wait()
        return MoveTaskReply(ok=True, source="fog-1", generation=2)

    monkeypatch.setattr(mover, "_move", slow_move)
    first = asyncio.create_task(mover.move(req()))
    await asyncio.sleep(0)
    first.cancel()  # the first asker's connection went away: the move goes on
    again = asyncio.create_task(mover.move(req()))
    other = await mover.move(req("mig-2"))
    assert not other.ok and other.status == 409 and "mig-1" in other.reason
    release.set()
    reply = await asyncio.wait_for(again, 5)
    assert reply.ok and reply.generation == 2
    assert len(calls) == 1, "the drain ran twice"
    assert mover._moving == {}


def test_a_resent_message_carries_its_senders_generation() -> None:
    payload = encode_records("count", 1, [(519, {"key": "nyc"}), (520, {"key": "nyc"})])
    again = decode(restamp(payload, 2))
    assert again.generation == 2 and again.producer == "count"
    assert again.records == [[519, {"key": "nyc"}], [520, {"key": "nyc"}]]
    with pytest.raises(BadDataMessage):
        restamp(b"\x00ECF1 a chunk", 2)
    with pytest.raises(BadDataMessage):
        restamp(orjson.dumps([1, 2]), 2)
