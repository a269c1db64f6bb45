"""What a producer keeps for retransmission until its consumer confirms it."""

from __future__ import annotations

import collections

RETRANSMIT_AFTER = 10.0  # seconds of consumer silence before unconfirmed messages go again


class Unconfirmed:
    """Messages published on a channel and not yet confirmed by its consumer."""

    def __init__(self) -> None:
        self.msgs: collections.deque[tuple[int, bytes]] = collections.deque()  # (last seq, payload)
        self.eos: bytes | None = None

    def add(self, last_seq: int, payload: bytes) -> None:
        self.msgs.append((last_seq, payload))

    def confirm(self, hwm: int, eos_seen: bool) -> None:
        while self.msgs and self.msgs[0][0] <= hwm:
            self.msgs.popleft()
        if eos_seen:
            self.eos = None

    def since(self, seq: int) -> list[bytes]:
        out = [p for last, p in self.msgs if last >= seq]
        if self.eos is not None:
            out.append(self.eos)
        return out

    def __bool__(self) -> bool:
        return bool(self.msgs) or self.eos is not None
