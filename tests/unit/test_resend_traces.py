"""A message sent again (its consumer subscribed late, or asked for a gap) carries the trace
of the sampled record in it, as the first send did: otherwise a retransmit breaks the record's
trace (seen in CI: a consumer that came up late got every record resent, untraced)."""

from __future__ import annotations

import asyncio
import time

from opentelemetry.sdk.trace import TracerProvider

from echo_agent.dataplane.channels import Outputs
from echo_agent.dataplane.recordtrace import TRACEPARENT, RecordTracer
from echo_shared.codec import decode
from echo_shared.messages import Binding
from echo_shared.names import Names

NAMES = Names("t")
TOPIC = NAMES.data_topic("df", "p", "c")


class Recorder:
    """A transport that acknowledges every publish and remembers its user properties."""

    def __init__(self) -> None:
        self.connected = True
        self.sent: list[tuple[str, bytes, dict[str, str] | None]] = []

    def publish(
        self,
        topic: str,
        payload: bytes,
        *,
        qos: int = 1,
        retain: bool = False,
        user_properties: dict[str, str] | None = None,
    ) -> asyncio.Future[None]:
        self.sent.append((topic, payload, user_properties))
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        fut.set_result(None)
        return fut

    async def wait_for_window(self) -> None:
        return None

    def traced_seqs(self) -> list[int]:
        """Seqs of the data messages sent with a traceparent, in send order."""
        return [
            r[0]
            for t, p, props in self.sent
            if t == TOPIC and props and TRACEPARENT in props
            for r in decode(p).records
        ]


async def test_a_resent_message_carries_the_trace_of_its_sampled_record() -> None:
    link = Recorder()
    out = Outputs(link, "p", 1, [Binding(peer="c", topic=TOPIC)], NAMES)  # type: ignore[arg-type]
    tracer = RecordTracer(1.0, dataflow="df", task="p", device="d")
    tracer._tracer = TracerProvider().get_tracer("test")  # real spans, nothing exported
    for i in range(1, 11):  # a message each (the broker has each before the next is emitted)
        if i == 5:
            with tracer.source(i):
                out.emit({"i": i})
        else:
            out.emit({"i": i})
        await asyncio.sleep(0)
    assert link.traced_seqs() == [5]
    first = next(props for t, p, props in link.sent if props)

    out.resend(out.channels[0], 1, "consumer subscribed")  # type: ignore[arg-type]
    deadline = time.monotonic() + 5
    while sum(1 for t, *_ in link.sent if t == TOPIC) < 20:
        assert time.monotonic() < deadline, "the resend did not go out"
        await asyncio.sleep(0.01)
    assert link.traced_seqs() == [5, 5], "the resent record 5 carries its trace again"
    assert [props for t, p, props in link.sent if props] == [first, first]

    box = out.channels[0].unconfirmed  # type: ignore[union-attr]
    box.confirm(10, False)
    assert not box.msgs, "confirmed messages leave nothing behind"
