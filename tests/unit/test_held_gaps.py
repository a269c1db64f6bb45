"""A message lost on the way leaves a gap: the consumer holds what comes after it and asks
the producer for the missing records within ``HOLD_SECONDS``, also while messages keep
arriving (a fake transport; reordering on real brokers: ``tests/integration``)."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

from echo_agent.dataplane.channels import Outputs
from echo_agent.dataplane.consuming import HOLD_SECONDS, Consumer
from echo_agent.operators import build
from echo_shared.codec import encode_records
from echo_shared.messages import Binding, ResendRequest
from echo_shared.mqtt import MqttMessage
from echo_shared.names import Names
from tests.unit.test_autonomy import Link

NAMES = Names("t")


async def test_a_gap_under_steady_traffic_is_asked_for_within_the_hold_time(tmp_path: Path) -> None:
    link = Link()
    topic = NAMES.data_topic("df", "p", "c")
    out = Outputs(link, "c", 1, [], NAMES)
    consumer = Consumer(
        task="c",
        op=build("core.passthrough", {}),
        mqtt=link,
        outputs=out,
        inputs=[Binding(peer="p", topic=topic, generation=1)],
        names=NAMES,
        data_dir=tmp_path,
        window=100_000,
        generation=1,
    )
    runner = asyncio.create_task(consumer.run())
    resend = NAMES.resend_topic(topic)

    def asked() -> bool:
        return any(t == resend and ResendRequest.from_bytes(p).seq == 3 for t, p, _ in link.sent)

    start = time.monotonic()
    mid = 0
    seq = 0
    try:
        # 1, 2, (3 lost), 4, 5, ... one message every 2 ms: the queue never stays empty for long
        while not asked() and time.monotonic() - start < 3.0:
            seq += 1
            if seq == 3:
                continue
            mid += 1
            payload = encode_records("p", 1, [(seq, {"i": seq})])
            consumer.queue.put_nowait(
                MqttMessage(topic=topic, payload=payload, qos=1, mid=mid, retain=False, dup=False, epoch=1)
            )
            await asyncio.sleep(0.002)  # the producer's pace
        took = time.monotonic() - start
        assert asked(), "the gap was never asked for while messages kept coming"
        assert took < HOLD_SECONDS + 1.0, f"asked after {took:.2f} s"
    finally:
        runner.cancel()
        await asyncio.gather(runner, return_exceptions=True)
        consumer.close()
