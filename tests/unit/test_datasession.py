"""The agent's one data connection shared by its tasks: routing, acknowledgements, windows.

The MQTT client is replaced by a recorder; the real broker path is covered by
tests/e2e/test_pipeline.py::test_an_agent_runs_its_tasks_over_one_data_connection."""

from __future__ import annotations

import asyncio

import pytest

from echo_agent.dataplane.datasession import DataSession
from echo_shared.mqtt import MqttMessage, MqttUnavailable


class FakeClient:
    client_id = "echo-data-edge-1"
    connected = True

    def __init__(self) -> None:
        self.acked: list[int] = []
        self.subscribed: list[str] = []
        self.unsubscribed: list[str] = []
        self.published: list[asyncio.Future[None]] = []

    def ack(self, msg: MqttMessage) -> None:
        self.acked.append(msg.mid)

    async def subscribe(self, topics: list[str], qos: int = 1, timeout: float = 10.0) -> None:
        self.subscribed += topics

    async def unsubscribe(self, topics: list[str]) -> None:
        self.unsubscribed += topics

    def publish(self, topic: str, payload: bytes, **_: object) -> asyncio.Future[None]:
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.published.append(fut)
        return fut


def session() -> tuple[DataSession, FakeClient]:
    s = DataSession("mqtt://127.0.0.1:1", "echo-data-edge-1", session_expiry=60)
    fake = FakeClient()
    s.client = fake  # type: ignore[assignment]
    return s, fake


def message(topic: str, mid: int, qos: int = 1) -> MqttMessage:
    return MqttMessage(topic, b"x", qos, mid, False, False, epoch=1)


async def test_a_message_goes_only_to_the_tasks_subscribed_to_its_topic() -> None:
    s, _ = session()
    got: dict[str, list[int]] = {"a": [], "b": []}
    a = s.channels("a", lambda m: got["a"].append(m.mid))
    b = s.channels("b", lambda m: got["b"].append(m.mid))
    await a.subscribe(["df/e1"])
    await b.subscribe(["df/e2"])
    s._dispatch(message("df/e1", 1))
    s._dispatch(message("df/e2", 2))
    assert got == {"a": [1], "b": [2]}


async def test_a_shared_delivery_is_acked_to_the_broker_once_every_task_acked_it() -> None:
    s, fake = session()
    held: dict[str, list[MqttMessage]] = {"a": [], "b": []}
    a = s.channels("a", held["a"].append)
    b = s.channels("b", held["b"].append)
    await a.subscribe(["df/progress"])
    await b.subscribe(["df/progress"])
    s._dispatch(message("df/progress", 7))
    a.ack(held["a"][0])
    assert fake.acked == []  # b still holds it: its outputs are not safe yet
    a.ack(held["a"][0])  # a second ack from the same task counts once
    assert fake.acked == []
    b.ack(held["b"][0])
    assert fake.acked == [7]


async def test_a_closing_task_releases_what_it_held_and_its_topics() -> None:
    s, fake = session()
    held: list[MqttMessage] = []
    a = s.channels("a", held.append)
    b = s.channels("b", lambda m: None)
    await a.subscribe(["df/only-a", "df/both"])
    await b.subscribe(["df/both"])
    s._dispatch(message("df/only-a", 3))
    await a.close()
    assert fake.acked == [3]  # its producer resends to whichever copy reports it lacks it
    assert fake.unsubscribed == ["df/only-a"]  # b still needs df/both
    with pytest.raises(MqttUnavailable):
        await a.subscribe(["df/x"])
    assert isinstance(a.publish("df/out", b"r").exception(), MqttUnavailable)


async def test_a_message_no_task_wants_is_acked_counted_and_its_topic_dropped() -> None:
    s, fake = session()
    s._dispatch(message("df/old-life", 9))
    s._dispatch(message("df/old-life", 10))
    await asyncio.gather(*s._dropping.values())
    assert fake.acked == [9, 10]
    assert s.unrouted == 2
    assert fake.unsubscribed == ["df/old-life"]


async def test_a_subscription_is_sent_again_so_the_retained_report_reaches_the_new_task() -> None:
    s, fake = session()
    await s.channels("a", lambda m: None).subscribe(["df/progress"])
    await s.channels("b", lambda m: None).subscribe(["df/progress"])
    assert fake.subscribed == ["df/progress", "df/progress"]


async def test_each_task_has_its_own_publish_window() -> None:
    s, fake = session()
    a = s.channels("a", lambda m: None)
    a._window = 2
    b = s.channels("b", lambda m: None)
    a.publish("df/a", b"1")
    a.publish("df/a", b"2")
    assert a.window_full and a.unacked == 2
    assert not b.window_full  # a slow path of one task does not block another
    waiting = asyncio.ensure_future(a.wait_for_window())
    await asyncio.sleep(0)
    assert not waiting.done()
    fake.published[0].set_result(None)
    await asyncio.wait_for(waiting, 1)
    assert a.unacked == 1
