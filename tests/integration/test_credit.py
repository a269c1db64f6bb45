"""Credit on a real broker: a producer never runs more than its window ahead of its consumer."""

from __future__ import annotations

import asyncio
import uuid

import pytest

from echo_agent.dataplane.channels import Outputs
from echo_agent.dataplane.intake import Progress
from echo_cli.devstack import Brokers
from echo_shared.messages import Binding
from echo_shared.mqtt import MqttMessage
from echo_shared.names import Names
from tests.harness.waiting import eventually


async def test_producer_blocks_at_the_window_until_the_consumer_reports(
    brokers: Brokers, names: Names
) -> None:
    data = names.data_topic("df-credit", "p", "c")
    progress_topic = names.progress_topic(data)
    outputs: Outputs | None = None

    def on_message(m: MqttMessage) -> None:
        if outputs is not None and m.topic == progress_topic:
            outputs.on_control(m)

    producer = brokers.mqtt_client("test-p-" + uuid.uuid4().hex[:6], on_message=on_message)
    consumer = brokers.mqtt_client("test-c-" + uuid.uuid4().hex[:6])
    outputs = Outputs(producer, "p", 1, [Binding(peer="c", topic=data)], names, window=100)
    async with producer, consumer:
        await producer.subscribe(progress_topic)
        for _ in range(100):
            outputs.emit({"x": 1})
        await asyncio.gather(*outputs.flush())
        assert outputs.ahead == 100
        with pytest.raises(TimeoutError):  # no credit: blocked
            await asyncio.wait_for(outputs.wait_window(), 0.3)

        progress = Progress(consumer, "c", {"p": progress_topic}, step=10)
        progress.maybe_report({"p": 60}, caught_up=False)  # 60 processed: 40 ahead, 60 records of credit
        await asyncio.wait_for(outputs.wait_window(), 5)
        assert outputs.ahead == 40

        # reports below the step wait until the consumer catches up
        progress.maybe_report({"p": 65}, caught_up=False)
        progress.maybe_report({"p": 66}, caught_up=True)  # too soon after the last report...
        assert progress.unreported
        progress.flush_due({"p": 66}, None, None)  # ...so the idle consumer reports it shortly
        await eventually(lambda: outputs.ahead == 34, what="credit up to 66")
        await asyncio.gather(*progress.clear())


async def test_a_restarted_producer_learns_the_consumer_position_from_the_retained_report(
    brokers: Brokers, names: Names
) -> None:
    data = names.data_topic("df-credit2", "p", "c")
    progress_topic = names.progress_topic(data)
    async with brokers.mqtt_client("test-c-" + uuid.uuid4().hex[:6]) as consumer:
        progress = Progress(consumer, "c", {"p": progress_topic}, step=1)
        await asyncio.gather(*progress.maybe_report({"p": 500}, caught_up=True))
        outputs: Outputs | None = None

        def on_message(m: MqttMessage) -> None:
            if outputs is not None:
                outputs.on_control(m)

        producer = brokers.mqtt_client("test-p-" + uuid.uuid4().hex[:6], on_message=on_message)
        outputs = Outputs(producer, "p", 2, [Binding(peer="c", topic=data)], names, window=100, start_seq=450)
        async with producer:
            await producer.subscribe(progress_topic)
            await eventually(lambda: outputs.acked[progress_topic] == 500, what="the retained report")
        await asyncio.gather(*progress.clear())
