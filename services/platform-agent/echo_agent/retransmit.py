"""What a producer keeps for retransmission until its consumer confirms it."""

from __future__ import annotations

import collections

RETRANSMIT_AFTER = 10.0  # seconds of consumer silence before unconfirmed messages go again


class Unconfirmed:
    """Messages published on a channel and not yet confirmed by its consumer."""

    def __init__(self) -> None:
        self.msgs: collections.deque[tuple[int, bytes]] = collections.deque()  # (last seq, payload)
        self.eos: bytes | None = None
        # last seq -> the trace properties of a message that carried a sampled record: a
        # message sent again carries its trace on (only sampled ones, so nothing per record)
        self.traced: dict[int, dict[str, str]] = {}

    def add(self, last_seq: int, payload: bytes, props: dict[str, str] | None = None) -> None:
        self.msgs.append((last_seq, payload))
        if props:
            self.traced[last_seq] = props

    def confirm(self, hwm: int, eos_seen: bool) -> None:
        while self.msgs and self.msgs[0][0] <= hwm:
            last, _ = self.msgs.popleft()
            if self.traced:
                self.traced.pop(last, None)
        if eos_seen:
            self.eos = None

    def since(self, seq: int) -> list[tuple[bytes, dict[str, str] | None]]:
        """What goes again from ``seq`` on: each message with the trace it carried."""
        traced = self.traced
        out = [(p, traced.get(last) if traced else None) for last, p in self.msgs if last >= seq]
        if self.eos is not None:
            out.append((self.eos, None))
        return out

    def __bool__(self) -> bool:
        return bool(self.msgs) or self.eos is not None
