"""An operator that wants batches and says ``batch_eager`` (a worker process's proxy) gets
what is in hand as soon as no message waits, instead of waiting ``batch_seconds`` for a
full batch (a fake transport)."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any, ClassVar

import pytest

from echo_agent.dataplane.channels import Outputs
from echo_agent.dataplane.consuming import Consumer
from echo_agent.operators.base import Operator, Record
from echo_agent.runtimes.workers import WorkerOperator
from echo_shared.codec import encode_records
from echo_shared.messages import Binding
from echo_shared.mqtt import MqttMessage
from echo_shared.names import Names
from tests.harness.waiting import eventually
from tests.unit.test_autonomy import Link

NAMES = Names("t")


class Batches(Operator):
    wants_batches: ClassVar[bool] = True
    batch_count: ClassVar[int] = 1000
    batch_seconds: ClassVar[float] = 60.0
    batch_eager: ClassVar[bool] = True

    def __init__(self, config: Any = None) -> None:
        super().__init__(config)
        self.calls: list[int] = []
        self.called = asyncio.Event()

    def process_batch(self, records: list[Record]) -> list[Record]:
        self.calls.append(len(records))
        self.called.set()
        return records


class Patient(Batches):
    batch_eager: ClassVar[bool] = False


@pytest.mark.parametrize("cls", [Batches, Patient])
async def test_a_batch_goes_once_nothing_more_is_in_hand(cls: type[Batches], tmp_path: Path) -> None:
    assert WorkerOperator.batch_eager, "the worker proxy is eager"
    link = Link()
    topic = NAMES.data_topic("df", "p", "c")
    op = cls()
    consumer = Consumer(
        task="c",
        op=op,
        mqtt=link,
        outputs=Outputs(link, "c", 1, [], NAMES),
        inputs=[Binding(peer="p", topic=topic, generation=1)],
        names=NAMES,
        data_dir=tmp_path,
        window=100_000,
        generation=1,
    )
    runner = asyncio.create_task(consumer.run())
    try:
        for mid, first in enumerate((1, 4), start=1):  # two messages of three records, queued at once
            payload = encode_records("p", 1, [(s, {"i": s}) for s in range(first, first + 3)])
            consumer.queue.put_nowait(
                MqttMessage(topic=topic, payload=payload, qos=1, mid=mid, retain=False, dup=False, epoch=1)
            )
        if cls is Batches:
            async with asyncio.timeout(5):
                await op.called.wait()
            assert op.calls == [6], "both messages in one batch: it went when the queue was empty"
        else:
            await eventually(lambda: consumer.records_in == 6, what="both messages taken")
            assert op.calls == [], "a patient operator waits for a full batch or its seconds"
    finally:
        runner.cancel()
        await asyncio.gather(runner, return_exceptions=True)
        consumer.close()
