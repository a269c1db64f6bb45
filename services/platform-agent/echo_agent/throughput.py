"""What one core of this agent forwards: the ``records_per_s`` it declares (``Capacity``).

Placement keeps an agent's event loop (one core: every task that is not in a worker process
shares it) and its cores from saturating, so it needs the device's speed, not only its core
count: a Raspberry Pi forwards a fraction of what a cloud VM does. The agent measures it once
at start (``measured``, a few ms): the per-record work of forwarding a stream record — decode a
coalesced message, check the record's sequence, hand it to a trivial operator, encode it
again — timed on the agent's own codec, best of a few rounds. That loop is a fixed share of
what the whole agent does per record (the broker clients, acknowledgements, progress and the
event loop take the rest); ``REFERENCE`` anchors it: on the reference machine (2 cores, where
``bench/stream_edge.py`` moves ~250 k records/s between two agents through a broker) the loop
takes ``REFERENCE_LOOP_US`` per record and the agent forwards ``REFERENCE`` records/s on one
core. Other machines scale by their own loop time. ``ECHO_RECORDS_PER_S`` declares the figure
instead (measured with a real dataflow, it is better than any estimate).
"""

from __future__ import annotations

import functools
import time
from typing import Any

from echo_shared.codec import decode, encode_records

REFERENCE = 100_000.0  # records/s one core of the reference machine forwards
REFERENCE_LOOP_US = 0.28  # the loop's time per record there
RECORDS = 256  # one coalesced message
ROUNDS = 8
TRIES = 3


def _loop(message: bytes) -> None:
    got = decode(message)
    last = -1
    out: list[tuple[int, Any]] = []
    for seq, record in got.records:
        if seq <= last:
            continue
        last = seq
        out.append((seq, dict(record)))
    encode_records(got.producer, got.generation, out)


@functools.cache
def measured() -> float:
    """Records/s one core of this agent forwards (estimated from its own loop; cached)."""
    message = encode_records("calibration", 1, [(i, {"seq": i, "v": "x" * 220}) for i in range(RECORDS)])
    best = float("inf")
    for _ in range(TRIES):
        t0 = time.perf_counter()
        for _ in range(ROUNDS):
            _loop(message)
        best = min(best, (time.perf_counter() - t0) / (ROUNDS * RECORDS))
    per_record_us = max(best * 1e6, 1e-3)
    return float(round(REFERENCE * REFERENCE_LOOP_US / per_record_us, -2))


__all__ = ["measured"]
