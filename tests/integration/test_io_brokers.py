"""io.mqtt_* and io.nats_* operators against the real brokers."""

from __future__ import annotations

import asyncio
import socket
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from echo_agent.operators import TaskContext, build
from echo_agent.operators.io_brokers import BrokerUnreachable
from echo_cli.devstack import Brokers
from tests.harness.waiting import eventually


def ctx(brokers: Brokers, tmp_path: Path, task: str) -> TaskContext:
    return TaskContext(
        "df-" + uuid.uuid4().hex[:12],
        task,
        "edge-7",
        1,
        tmp_path,
        mqtt_url=brokers.mqtt_url,
        nats_url=brokers.nats_url,
        access=brokers.access(),
    )


class Collector:
    """Runs a source's generate() in a task, collecting what it emits."""

    def __init__(self, op: Any) -> None:
        self.op = op
        self.records: list[dict[str, Any]] = []
        self.task = asyncio.create_task(self._run(op.generate()))

    async def _run(self, gen: AsyncIterator[dict[str, Any]]) -> None:
        async for r in gen:
            self.records.append(r)

    async def wait(self, n: int, timeout: float = 10.0) -> list[dict[str, Any]]:
        await eventually(
            lambda: len(self.records) >= n or self.task.done(), timeout=timeout, what=f"{n} records"
        )
        if self.task.done():
            self.task.result()  # raises what ended the source
        return self.records

    async def stop(self) -> None:
        self.task.cancel()
        await asyncio.gather(self.task, return_exceptions=True)
        await self.op.close()


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def test_mqtt_sink_to_mqtt_source(brokers: Brokers, tmp_path: Path) -> None:
    topic = f"io-test/{uuid.uuid4().hex}"
    source = build("io.mqtt_source", {"topic": f"{topic}/+", "topic_field": "topic"})
    await source.open(ctx(brokers, tmp_path, "src"))
    got = Collector(source)
    sink: Any = build("io.mqtt_sink", {"topic": f"{topic}/a"})
    await sink.open(ctx(brokers, tmp_path, "sink"))
    try:
        await sink.process_batch([{"seq": i, "v": "x" * i} for i in range(200)])
        await sink.process({"seq": 200, "v": ""})
        assert sink.published == 201
        records = await got.wait(201)
        assert records == [
            {"seq": i, "v": "x" * i if i < 200 else "", "topic": f"{topic}/a"} for i in range(201)
        ]
    finally:
        await got.stop()
        await sink.close()


async def test_mqtt_text_format_and_non_json(brokers: Brokers, tmp_path: Path) -> None:
    topic = f"io-test/{uuid.uuid4().hex}"
    text_src = build("io.mqtt_source", {"topic": topic, "format": "text", "qos": 0})
    json_src: Any = build("io.mqtt_source", {"topic": topic})
    for i, op in enumerate((text_src, json_src)):
        await op.open(ctx(brokers, tmp_path, f"src{i}"))
    texts, jsons = Collector(text_src), Collector(json_src)
    sink: Any = build("io.mqtt_sink", {"topic": topic, "format": "text", "field": "msg"})
    await sink.open(ctx(brokers, tmp_path, "sink"))
    try:
        await sink.process_batch([{"msg": "hello"}, {"msg": "not json {"}, {"msg": [1, 2]}, {"other": 1}])
        assert (sink.published, sink.payloads.bad) == (3, 1)  # the record without "msg" is dropped
        assert await texts.wait(3) == [{"payload": "hello"}, {"payload": "not json {"}, {"payload": "[1,2]"}]
        # json: "hello" and "not json {" are not JSON (dropped, counted); [1,2] is wrapped
        assert await jsons.wait(1) == [{"payload": [1, 2]}]
        await eventually(lambda: json_src.payloads.bad == 2, what="2 bad messages counted")
    finally:
        for c in (texts, jsons):
            await c.stop()
        await sink.close()


async def test_persistent_mqtt_source_gets_what_was_sent_while_away(brokers: Brokers, tmp_path: Path) -> None:
    topic = f"io-test/{uuid.uuid4().hex}"
    task_ctx = ctx(brokers, tmp_path, "src")
    config = {"topic": topic, "persistent": True}
    first = build("io.mqtt_source", config)
    await first.open(task_ctx)
    await first.close()  # the session stays on the broker
    async with brokers.mqtt_client(f"pub-{uuid.uuid4().hex[:8]}") as pub:
        await asyncio.gather(*(pub.publish(topic, b'{"n": %d}' % i) for i in range(5)))
    again = build("io.mqtt_source", config)
    await again.open(task_ctx)
    got = Collector(again)
    try:
        assert await got.wait(5) == [{"n": i} for i in range(5)]
    finally:
        await got.stop()
        # end the session for good
        async with brokers.mqtt_client(f"echo-mqtt-source-{task_ctx.dataflow}-src", persistent=True) as c:
            await c.close(discard_session=True)


async def test_nats_sink_to_nats_source(brokers: Brokers, tmp_path: Path) -> None:
    subject = f"io-test.{uuid.uuid4().hex}"
    source = build("io.nats_source", {"subject": f"{subject}.*", "subject_field": "subject"})
    text_src = build("io.nats_source", {"subject": f"{subject}.b", "format": "text"})
    await source.open(ctx(brokers, tmp_path, "src"))
    await text_src.open(ctx(brokers, tmp_path, "txt"))
    got, texts = Collector(source), Collector(text_src)
    sink: Any = build("io.nats_sink", {"subject": f"{subject}.a"})
    text_sink: Any = build("io.nats_sink", {"subject": f"{subject}.b", "format": "text"})
    await sink.open(ctx(brokers, tmp_path, "sink"))
    await text_sink.open(ctx(brokers, tmp_path, "sink2"))
    try:
        await sink.process_batch([{"seq": i} for i in range(300)])
        assert [r["seq"] for r in await got.wait(300)] == list(range(300))
        assert got.records[0] == {"seq": 0, "subject": f"{subject}.a"}
        await text_sink.process({"payload": "plain text"})
        assert await texts.wait(1) == [{"payload": "plain text"}]
    finally:
        for c in (got, texts):
            await c.stop()
        await sink.close()
        await text_sink.close()


@pytest.mark.parametrize(
    ("name", "config"),
    [
        ("io.mqtt_source", {"topic": "t"}),
        ("io.mqtt_sink", {"topic": "t"}),
        ("io.nats_source", {"subject": "t"}),
        ("io.nats_sink", {"subject": "t"}),
    ],
)
async def test_unreachable_broker_fails_open_within_the_timeout(
    tmp_path: Path, name: str, config: dict[str, Any]
) -> None:
    port = closed_port()
    scheme = "mqtt" if "mqtt" in name else "nats"
    url = f"{scheme}://127.0.0.1:{port}"
    op = build(name, {**config, "url": url, "connect_timeout": 1.5})
    start = time.monotonic()
    with pytest.raises(BrokerUnreachable) as e:
        await op.open(TaskContext("df-x", "t", "edge-7", 1, tmp_path))
    assert time.monotonic() - start < 6
    assert url in str(e.value) or f"127.0.0.1:{port}" in str(e.value)
    assert "edge-7" in str(e.value)
    await op.close()
