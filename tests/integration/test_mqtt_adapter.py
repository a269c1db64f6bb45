"""The MQTT adapter against a real Mosquitto: QoS 1, manual acks, persistent sessions, takeover."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

from echo_cli.devstack import Brokers
from echo_shared.mqtt import MqttClient, MqttMessage


def cid() -> str:
    return "test-" + uuid.uuid4().hex[:10]


class Inbox:
    def __init__(self) -> None:
        self.messages: list[MqttMessage] = []
        self.arrived = asyncio.Event()

    def __call__(self, m: MqttMessage) -> None:
        self.messages.append(m)
        self.arrived.set()

    async def wait(self, n: int, timeout: float = 5.0) -> None:
        async def enough() -> None:
            while len(self.messages) < n:
                self.arrived.clear()
                await self.arrived.wait()

        await asyncio.wait_for(enough(), timeout)


async def test_qos1_round_trip_with_user_properties(brokers: Brokers) -> None:
    topic = f"t/{uuid.uuid4().hex}"
    inbox = Inbox()
    async with (
        brokers.mqtt_client(cid(), on_message=inbox) as sub,
        brokers.mqtt_client(cid()) as pub,
    ):
        await sub.subscribe(topic)
        await asyncio.gather(
            *(pub.publish(topic, str(i).encode(), user_properties={"k": "v"}) for i in range(100))
        )
        await inbox.wait(100)
    assert [m.payload for m in inbox.messages] == [str(i).encode() for i in range(100)]
    assert inbox.messages[0].user_properties == {"k": "v"}


async def test_unacked_messages_are_redelivered_to_the_next_session_holder(brokers: Brokers) -> None:
    topic, session = f"t/{uuid.uuid4().hex}", cid()
    first = Inbox()
    a = brokers.mqtt_client(session, on_message=first, persistent=True, manual_ack=True)
    await a.start()
    await a.subscribe(topic)
    async with brokers.mqtt_client(cid()) as pub:
        await asyncio.gather(*(pub.publish(topic, bytes([i])) for i in range(3)))
        await first.wait(3)
        a.ack(first.messages[0])  # only the first is processed
        await a.close()
        second = Inbox()
        async with brokers.mqtt_client(session, on_message=second, persistent=True, manual_ack=True) as b:
            assert b.session_present
            await second.wait(2)
            assert [m.payload for m in second.messages[:2]] == [bytes([1]), bytes([2])]
            for m in second.messages:
                b.ack(m)
            await b.close(discard_session=True)
    # discarded for good (the broker may take a moment to process the disconnect)
    deadline = asyncio.get_running_loop().time() + 5
    while True:
        async with brokers.mqtt_client(session, persistent=True) as c:
            present = c.session_present
        if not present or asyncio.get_running_loop().time() > deadline:
            break
    assert not present


async def test_messages_wait_in_the_session_while_nobody_is_connected(brokers: Brokers) -> None:
    topic, session = f"t/{uuid.uuid4().hex}", cid()
    a = brokers.mqtt_client(session, persistent=True, manual_ack=True)
    await a.start()
    await a.subscribe(topic)
    await a.close()
    async with brokers.mqtt_client(cid()) as pub:
        await asyncio.gather(*(pub.publish(topic, str(i).encode()) for i in range(50)))
    inbox = Inbox()
    async with brokers.mqtt_client(session, on_message=inbox, persistent=True, manual_ack=True) as b:
        await inbox.wait(50)
        for m in inbox.messages:
            b.ack(m)
        await b.close(discard_session=True)
    assert sorted(int(m.payload) for m in inbox.messages) == list(range(50))


async def test_two_holders_of_one_session_do_not_fight_forever(brokers: Brokers) -> None:
    session = cid()
    a = brokers.mqtt_client(session, persistent=True)
    await a.start()
    b = brokers.mqtt_client(session, persistent=True)
    await b.start()
    waits = [asyncio.ensure_future(a.taken_over.wait()), asyncio.ensure_future(b.taken_over.wait())]
    try:
        done, _ = await asyncio.wait(waits, timeout=10, return_when=asyncio.FIRST_COMPLETED)
        assert done, "neither client gave the session up"
        loser, winner = (a, b) if a.taken_over.is_set() else (b, a)
        await winner.wait_connected(5)
        assert not loser.connected and not winner.taken_over.is_set()
    finally:
        for w in waits:
            w.cancel()
        await asyncio.gather(*waits, return_exceptions=True)
        await a.close()
        await b.close(discard_session=True)


async def test_unreachable_broker_is_a_clear_error() -> None:
    from echo_cli.devstack import free_port
    from echo_shared.mqtt import MqttUnavailable

    c = MqttClient(f"mqtt://127.0.0.1:{free_port()}", cid())
    try:
        await c.start(timeout=0.5)
    except MqttUnavailable as e:
        assert "unreachable" in str(e)
    else:
        raise AssertionError("connected to nothing")


async def test_a_message_over_the_part_size_arrives_whole_and_again_until_acknowledged(
    brokers: Brokers,
) -> None:
    """A payload over ``part_over`` goes in parts and reaches the handler once, whole; a
    receiver that did not acknowledge it gets it again, whole, from its session."""
    topic, session = f"t/{uuid.uuid4().hex}", cid()
    payload = bytes(range(256)) * 4096 + b"tail"  # 1 MiB + 4 bytes: 17 parts of 64 KiB
    small: dict[str, Any] = {"part_over": 100_000, "part_bytes": 65_536}
    first = Inbox()
    a = brokers.mqtt_client(session, on_message=first, persistent=True, manual_ack=True, **small)
    await a.start()
    await a.subscribe(topic)
    async with brokers.mqtt_client(cid(), **small) as pub:
        sent = pub.publish(topic, payload, user_properties={"k": "v"})
        between = pub.publish(topic, b"small")  # goes out between the parts, not behind them
        await asyncio.wait_for(asyncio.gather(sent, between), 10)
        await first.wait(2)
        assert [m.payload for m in first.messages] == [b"small", payload]
        whole = first.messages[1]
        assert whole.user_properties == {"k": "v"} and len(whole.more_mids) == 16
        assert a.parts.joined == 1 and a.parts.held == 0
        a.ack(first.messages[0])
        await a.close()  # not acknowledged: every part waits in the session
        second = Inbox()
        async with brokers.mqtt_client(
            session, on_message=second, persistent=True, manual_ack=True, **small
        ) as b:
            await second.wait(1)
            assert second.messages[0].payload == payload
            b.ack(second.messages[0])
            await b.close(discard_session=True)


async def test_a_message_in_parts_over_the_receivers_bound_is_dropped_and_counted(
    brokers: Brokers,
) -> None:
    topic = f"t/{uuid.uuid4().hex}"
    inbox = Inbox()
    small: dict[str, Any] = {"part_over": 10_000, "part_bytes": 4_096}
    async with (
        brokers.mqtt_client(
            cid(), on_message=inbox, manual_ack=True, max_assembly_bytes=50_000, **small
        ) as sub,
        brokers.mqtt_client(cid(), **small) as pub,
    ):
        await sub.subscribe(topic)
        await pub.publish(topic, b"z" * 60_000)  # over the receiver's bound
        await pub.publish(topic, b"k" * 40_000)  # within it
        await inbox.wait(1)
        assert [len(m.payload) for m in inbox.messages] == [40_000]
        assert sub.parts.dropped == {"too large": 1} and sub.parts.held == 0
        sub.ack(inbox.messages[0])


async def test_pieces_go_in_parts_and_a_receiver_may_keep_the_parts(brokers: Brokers) -> None:
    """A payload given as pieces is cut into parts without being joined; a receiver with
    ``whole_payloads=False`` gets the parts (``chunks``), not one joined payload."""
    topic = f"t/{uuid.uuid4().hex}"
    pieces = [bytes([i]) * (10_000 + i) for i in range(30)]  # ~300 KB in uneven pieces
    inbox = Inbox()
    small: dict[str, Any] = {"part_over": 100_000, "part_bytes": 65_536}
    async with (
        brokers.mqtt_client(cid(), on_message=inbox, whole_payloads=False, **small) as sub,
        brokers.mqtt_client(cid(), **small) as pub,
    ):
        await sub.subscribe(topic)
        await asyncio.wait_for(pub.publish(topic, pieces), 10)
        await pub.publish(topic, [b"a", b"b"])  # small: joined, one packet
        await inbox.wait(2)
    whole, tiny = inbox.messages
    assert whole.payload == b"" and [len(c) for c in whole.chunks[:-1]] == [65_536] * 4
    assert whole.data() == b"".join(pieces) and b"".join(whole.pieces()) == whole.data()
    assert tiny.payload == b"ab" and tiny.chunks == () and tiny.pieces() == [b"ab"]


async def test_a_cancelled_transfer_in_parts_sends_no_further_part(brokers: Brokers) -> None:
    """Cancelling a transfer's future stops it (an agent abandons a checkpoint when its task
    drains): the parts not yet sent never go, and what comes after is not held behind them."""
    topic = f"t/{uuid.uuid4().hex}"
    inbox = Inbox()
    small: dict[str, Any] = {"part_over": 10_000, "part_bytes": 4_096}
    total = 4_096 * 200
    async with (
        brokers.mqtt_client(cid(), on_message=inbox, **small) as sub,
        brokers.mqtt_client(cid(), **small) as pub,
    ):
        await sub.subscribe(topic)
        transfer = pub.publish(topic, b"p" * total)
        deadline = asyncio.get_running_loop().time() + 10
        while sub.parts.held == 0:  # the transfer is under way
            assert asyncio.get_running_loop().time() < deadline, "no part arrived"
            await asyncio.sleep(0.005)
        transfer.cancel()
        at_cancel = sub.parts.held
        # another transfer, part by part beside what is left of the first, if anything is
        await asyncio.wait_for(pub.publish(topic, b"a" * 4_096 * 30), 10)
        await inbox.wait(1)
        assert [len(m.payload) for m in inbox.messages] == [4_096 * 30]
        # what arrived of the first: the parts under way at the cancel (two unacknowledged at
        # most), not the 30 more that would have gone beside the second transfer
        assert at_cancel <= sub.parts.held <= at_cancel + 3 * 4_096 < total
