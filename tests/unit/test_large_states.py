"""A large state's whole path in slices (``stateslices``): the agent's checkpoint, read by
the master around its state, kept as it came, staged on a target as pieces and read there
a slice at a time: the same state at the end, and nothing parsed or joined on the way."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from echo_agent.control import TaskManager
from echo_agent.dataplane.channels import Outputs
from echo_master.agents_link import read_checkpoint
from echo_shared import stateslices
from echo_shared.messages import SPLICE, StageState, TaskCheckpoint, spliced
from echo_shared.mqtt import MqttMessage
from echo_shared.names import Names
from tests.unit.test_agent_checkpoints import FakeTransport, make_checkpoints
from tests.unit.test_snapshot_store import store

KEYS = 3_000


def big_state() -> dict[str, Any]:
    return {"counts": {f"key-{i}": i for i in range(KEYS)}, "seen": 3}


def target(tmp_path: Path) -> TaskManager:
    """An agent that reads commands (never dialled: nothing starts)."""
    return TaskManager(
        device="fog-2",
        mqtt_url="mqtt://127.0.0.1:1",
        names=Names("t"),
        data_dir=tmp_path,
        session_expiry=60,
        publish=lambda topic, payload: None,
        channel_window=10,
    )


def cut(pieces: list[bytes], size: int) -> list[bytes]:
    """The pieces as a receiver gets them: parts of ``size`` bytes, cut anywhere."""
    whole = b"".join(pieces)
    return [whole[i : i + size] for i in range(0, len(whole), size)]


async def test_a_large_state_travels_in_slices_from_checkpoint_to_staged_state(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setattr(stateslices, "SLICE_OVER", 1_000)
    monkeypatch.setattr(stateslices, "SLICE_BYTES", 8_192)
    state = big_state()
    published: list[Any] = []

    def publish(payload: Any) -> asyncio.Future[None]:
        published.append(payload)
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        fut.set_result(None)
        return fut

    out = Outputs(FakeTransport(), "p", 1, [], Names("t"))
    ck = make_checkpoints(out, publish, snapshot=lambda: state)
    out.emit({"i": 1})
    ck.take()
    state["counts"]["key-0"] = -1  # the operator moves on: the checkpoint has a copy
    for _ in range(200):
        if published:
            break
        await asyncio.sleep(0.01)
    # the agent sends pieces: the state's slices, never one buffer
    (pieces,) = published
    assert isinstance(pieces, list) and len(pieces) > 10
    expected = {**big_state()}
    # the master reads it from its parts around the state, and keeps the state as it came
    ckpt = read_checkpoint(cut(pieces, 5_000))
    assert isinstance(ckpt, TaskCheckpoint) and ckpt.task == "p" and ckpt.generation == 1
    raw = ckpt.snapshot.state
    assert isinstance(raw, stateslices.RawState) and "bytes" in repr(raw)
    assert raw.parse() == expected
    snaps, bucket = store()
    kept = await snaps.offload({"state": raw}, "df.p.1.ckpt.1")
    assert kept["state"] == {"$object": "df.p.1.ckpt.1", "bytes": len(raw)}
    stored = bucket.data["df.p.1.ckpt.1"]
    assert stored.startswith(stateslices.MARK) and len(stored) == len(raw)
    assert await snaps.load("df.p.1.ckpt.1") == expected  # a failover's read: assembled
    # staged on a target: the object's chunks spliced into the command, read there in slices
    cmd = StageState(cmd_id="c", dataflow="df", task="p", generation=2, name="df.p.1.ckpt.1")
    payload = spliced({**cmd.model_dump(mode="json"), "state": SPLICE}, cut([stored], 3_000))
    manager = target(tmp_path)
    for chunks in (cut(payload, 7_000), [b"".join(payload)]):  # in parts, or one message
        msg = MqttMessage(
            topic="t", payload=b"", qos=1, mid=1, retain=False, dup=False, epoch=0, chunks=tuple(chunks)
        )
        got = await manager._parse(msg)
        assert isinstance(got, StageState) and got.name == "df.p.1.ckpt.1" and got.state == expected


async def test_a_large_state_kept_on_the_device_in_slices_resumes_whole(tmp_path: Path) -> None:
    """A whole checkpoint and a deploy's restore, kept on disk in slices (as pieces), read
    back at the agent's restart as the state; the generation read from the file's head."""
    from echo_agent.localtasks import LocalTasks, _generation
    from echo_shared.messages import DeployTask, TaskSnapshot, state_pieces

    state = big_state()
    pieces = await stateslices.dump_pieces(state)
    local = LocalTasks(tmp_path)
    cmd = DeployTask(
        cmd_id="x",
        dataflow="df",
        task="p",
        generation=3,
        operator="stats.count_by_key",
        restore=TaskSnapshot(out_seq=5, taken_at=2.0),
    )
    local.save(cmd, pieces)  # a deploy's restore, large
    (back,) = local.load()
    assert back.restore is not None and stateslices.assemble(back.restore.state) == state
    ckpt = TaskCheckpoint(
        device="d", dataflow="df", task="p", generation=3, snapshot=TaskSnapshot(taken_at=9.0), ts=9.0
    )
    local.checkpoint("df", "p", state_pieces(ckpt, pieces), sync=False)
    assert _generation(tmp_path / "df" / "p" / "checkpoint.json") == 3
    (back,) = local.load()
    assert back.restore is not None and back.restore.taken_at == 9.0
    assert stateslices.assemble(back.restore.state) == state


async def test_a_deploy_restoring_a_state_in_slices_is_read_around_it(tmp_path: Path) -> None:
    from echo_shared.messages import DeployTask, TaskSnapshot, state_pieces

    state = big_state()
    cmd = DeployTask(
        cmd_id="x",
        dataflow="df",
        task="p",
        generation=3,
        operator="stats.count_by_key",
        restore=TaskSnapshot(out_seq=5, hwm={"up": 4}, taken_at=2.0),
    )
    payload = state_pieces(cmd, await stateslices.dump_pieces(state))
    manager = target(tmp_path)
    msg = MqttMessage(
        topic="t",
        payload=b"",
        qos=1,
        mid=1,
        retain=False,
        dup=False,
        epoch=0,
        chunks=tuple(cut(payload, 9_000)),
    )
    got = await manager._parse(msg)
    assert isinstance(got, DeployTask) and got.restore is not None
    assert (got.restore.out_seq, got.restore.hwm, got.restore.state) == (5, {"up": 4}, state)
    # a stop carries no state: slices in one are refused (a field it does not have)
    junk = MqttMessage(
        topic="t",
        payload=b'{"kind":"stop","cmd_id":"s","dataflow":"df","task":"p","generation":3,"x":'
        + stateslices.MARK
        + b"\n]}}",
        qos=1,
        mid=2,
        retain=False,
        dup=False,
        epoch=0,
    )
    with pytest.raises(ValidationError, match="extra"):
        await manager._parse(junk)
