"""The master's intake of agents' reports (``AgentLink.run``): a report that meets a Redis
outage is applied again, in order, once Redis answers; one that meets another dependency's
outage (NATS for a large checkpoint's state, the broker for a grant) is dropped so the
reports behind it are not held up (its agent reports again); a replica that does not lead
holds reports and commands no device."""

from __future__ import annotations

import asyncio
import time

import pytest
from nats.errors import NoServersError
from redis.exceptions import ConnectionError as RedisConnectionError

from echo_master.agents_link import AgentLink
from echo_shared.leases import Fenced
from echo_shared.messages import StopTask, TaskState, TaskStatus
from echo_shared.mqtt import MqttMessage
from echo_shared.names import Names

NAMES = Names("t")


def status(task: str) -> MqttMessage:
    report = TaskStatus(
        device="edge-1", dataflow="df-1", task=task, generation=1, state=TaskState.running, ts=time.time()
    )
    return MqttMessage(
        topic="t/dev/edge-1/status",
        payload=report.to_bytes(),
        qos=1,
        mid=0,
        retain=False,
        dup=False,
        epoch=1,
    )


class Applied:
    """``on_update``: fails as told for each task, records what was applied."""

    def __init__(self, failures: dict[str, list[Exception]]) -> None:
        self.failures = failures
        self.applied: list[str] = []
        self.done = asyncio.Event()

    async def __call__(self, report: TaskStatus) -> None:
        pending = self.failures.get(report.task)
        if pending:
            raise pending.pop(0)
        self.applied.append(report.task)
        if len(self.applied) == 3:
            self.done.set()


@pytest.fixture
def acked(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    out: list[str] = []
    monkeypatch.setattr("echo_shared.mqtt.MqttClient.ack", lambda self, msg: out.append(msg.payload.decode()))
    return out


async def run_until_applied(link: AgentLink, on_update: Applied) -> None:
    stop = asyncio.Event()
    runner = asyncio.create_task(link.run(stop))
    try:
        await asyncio.wait_for(on_update.done.wait(), 10)
    finally:
        stop.set()
        await asyncio.wait_for(runner, 5)


async def test_a_redis_outage_retries_in_order_another_outage_drops_the_one_report(acked: list[str]) -> None:
    on_update = Applied(
        {
            "a": [RedisConnectionError("down"), RedisConnectionError("down")],
            "b": [NoServersError()],
        }
    )
    link = AgentLink("mqtts://unused:8883", NAMES, on_update)
    for task in ("a", "b", "c", "d"):
        link._on_message(status(task))
    await run_until_applied(link, on_update)
    assert on_update.applied == ["a", "c", "d"], "a retried until Redis answered, b dropped, in order"
    assert len(acked) == 4, "every message acked once settled (b too: its agent reports again)"


async def test_a_standby_holds_reports_and_commands_no_device(acked: list[str]) -> None:
    on_update = Applied({})
    link = AgentLink("mqtts://unused:8883", NAMES, on_update)
    link.leading = lambda: False
    for task in ("a", "b", "c"):
        link._on_message(status(task))
    stop = asyncio.Event()
    runner = asyncio.create_task(link.run(stop))
    deadline = time.monotonic() + 5
    while len(acked) < 3:
        assert time.monotonic() < deadline, "reports not taken"
        await asyncio.sleep(0.01)
    assert on_update.applied == [] and len(link._held) == 3
    stop_cmd = StopTask(cmd_id="c1", dataflow="df-1", task="a", generation=1)
    with pytest.raises(Fenced, match="does not lead"):
        await link.send("edge-1", stop_cmd, timeout=1)
    link.leading = lambda: True
    link.elected()
    await asyncio.wait_for(on_update.done.wait(), 5)
    assert on_update.applied == ["a", "b", "c"], "held reports applied in arrival order once elected"
    stop.set()
    await asyncio.wait_for(runner, 5)
