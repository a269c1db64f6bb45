"""What a producer keeps for retransmission until its consumer confirms it."""

from __future__ import annotations

import collections

RETRANSMIT_AFTER = 10.0  # seconds of consumer silence before unconfirmed messages go again


class Unconfirmed:
    """Messages published on a channel and not yet confirmed by its consumer."""

    def __init__(self) -> None:
        # (last seq, payload, the trace properties it carried: a message sent again carries
        # the trace of the sampled record in it on)
        self.msgs: collections.deque[tuple[int, bytes, dict[str, str] | None]] = collections.deque()
        self.eos: bytes | None = None

    def add(self, last_seq: int, payload: bytes, props: dict[str, str] | None = None) -> None:
        self.msgs.append((last_seq, payload, props))

    def confirm(self, hwm: int, eos_seen: bool) -> None:
        while self.msgs and self.msgs[0][0] <= hwm:
            self.msgs.popleft()
        if eos_seen:
            self.eos = None

    def since(self, seq: int) -> list[tuple[bytes, dict[str, str] | None]]:
        """What goes again from ``seq`` on: each message with the trace it carried."""
        out = [(p, props) for last, p, props in self.msgs if last >= seq]
        if self.eos is not None:
            out.append((self.eos, None))
        return out

    def __bool__(self) -> bool:
        return bool(self.msgs) or self.eos is not None
