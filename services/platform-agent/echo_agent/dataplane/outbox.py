"""Where an output channel's messages go: to the broker, or to the channel's spool while the
broker is out of reach (an autonomous edge keeps producing when cut off).

An ``Outbox`` publishes straight to the broker while its link is up and nothing waits in
its spool. When the link is found down (the transport says it is not connected), it
*engages*: the messages published but not yet confirmed move to the spool (they may be
lost with the connection) and every new message is appended to the spool instead of
published, so the producing task goes on at its own pace while its credit window and the
broker's publish window stand still. Once the link is back a drainer sends what the spool
holds, in order, at the pace the broker and the consumer's credit allow (new messages
keep queueing behind it); when it has read everything the outbox publishes directly
again. A spool segment is deleted once its consumer confirmed all of it. Records the
spool dropped (``drop_oldest``, or older than its age limit) go to the consumer as a
skip message naming their seq range, so it does not wait for them.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from echo_shared.codec import encode_skip, restamp
from echo_shared.messages import Binding
from echo_shared.outage import Backoff, Outage

from .retransmit import Unconfirmed
from .spool import Entry, Fsync, Overflow, Spool

if TYPE_CHECKING:
    from .channels import Outputs

log = logging.getLogger(__name__)

LINK_POLL = 0.25  # seconds between looks at a link that is down, while the spool waits for it


@dataclass(frozen=True, slots=True)
class SpoolSettings:
    """The device's spool defaults (``ECHO_SPOOL_*``); an edge's ``spool`` overrides them."""

    directory: Path  # the task's spool directory; one subdirectory per output channel
    max_bytes: int = 1 << 30
    max_age: float = 86400.0
    overflow: Overflow = "block"
    fsync: Fsync = "checkpoint"

    def spool_for(self, binding: Binding) -> Spool:
        s = binding.spool
        name = "".join(c if c.isalnum() or c in "-_" else "_" for c in binding.peer) or "out"
        return Spool(
            self.directory / name,
            max_bytes=s.max_bytes if s is not None and s.max_bytes is not None else self.max_bytes,
            max_age=s.max_age if s is not None and s.max_age is not None else self.max_age,
            overflow=s.overflow if s is not None and s.overflow is not None else self.overflow,
            fsync=self.fsync,
        )


class Outbox:
    def __init__(self, outputs: Outputs, topic: str, unconfirmed: Unconfirmed, spool: Spool | None) -> None:
        self.o = outputs
        self.topic = topic
        self.unconfirmed = unconfirmed
        self.spool = spool
        # what a previous copy on this device left in the spool goes out before anything new
        self.engaged = spool is not None and spool.unread
        self.spooled = 0  # messages this copy wrote to the spool
        self._drainer: asyncio.Task[None] | None = None
        self._link: object | None = None
        self._since = time.monotonic()
        self._gen_mark = f',"generation":{outputs.generation},'.encode()
        self._dropped_logged = spool.dropped if spool is not None else 0

    # ---------------------------------------------------------------- sending

    def _client(self) -> object:
        if self._link is None:  # the client of this channel's transport, for the task's life
            t = self.o.mqtt
            self._link = t.client(self.topic) if hasattr(t, "client") else t
        return self._link

    def link_up(self) -> bool:
        return bool(getattr(self._client(), "connected", True))

    async def _wait_link(self) -> None:
        wait = getattr(self._client(), "wait_connected", None)
        if wait is not None:
            await wait()
            return
        while not self.link_up():  # noqa: ASYNC110 - a NATS client has no connected event
            await asyncio.sleep(LINK_POLL)

    def send(
        self, first: int, last: int, records: int, payload: bytes, props: dict[str, str] | None
    ) -> asyncio.Future[None]:
        """Publish a message of records ``first..last`` (or spool it); the future resolves
        once it is safe: acknowledged by the broker, or written to the spool."""
        spool = self.spool
        if spool is not None and (self.engaged or not self.link_up()):
            if not self.engaged:
                self._engage()
            spool.append(first, last, records, payload)
            self.spooled += 1
            if spool.dropped > self._dropped_logged:
                log.warning(
                    "edge %s -> %s: spool full or too old: %d record(s) dropped so far (%s)",
                    self.o.producer,
                    self.o.peers.get(self.topic, self.topic),
                    spool.dropped,
                    spool.overflow,
                )
                self._dropped_logged = spool.dropped
            self.kick()
            fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            fut.set_result(None)
            return fut
        fut = self.o.mqtt.publish(self.topic, payload, qos=1, user_properties=props)
        self.unconfirmed.add(last, payload, props)
        return fut

    def _engage(self) -> None:
        assert self.spool is not None
        self.engaged = True
        self._since = time.monotonic()
        kept = len(self.unconfirmed.msgs)
        for last, payload, _ in self.unconfirmed.msgs:  # (the spool keeps payloads, not traces)
            self.spool.append(last, last, 0, payload, sent=True)
        self.unconfirmed.msgs.clear()  # the spool sends them again once the link is back
        log.warning(
            "edge %s -> %s: broker out of reach; spooling to disk (%d unconfirmed message(s) kept)",
            self.o.producer,
            self.o.peers.get(self.topic, self.topic),
            kept,
        )

    def kick(self) -> None:
        """Make sure the drainer runs while the spool holds something unsent."""
        if self.spool is not None and self.engaged and (self._drainer is None or self._drainer.done()):
            self._drainer = asyncio.create_task(self._drain(), name=f"spool-{self.o.producer}-{self.topic}")

    async def _drain(self) -> None:
        """Send the spool until it is all read; an error (a file, a publish) is logged once
        per streak and the drain goes on after a back-off: it never dies silently."""
        outage = Outage(f"spool of edge {self.o.producer} -> {self.o.peers.get(self.topic, self.topic)}", log)
        backoff = Backoff(0.2, 5.0)
        while True:
            try:
                await self._drain_once()
                outage.ok()
                return
            except asyncio.CancelledError:
                raise
            except Exception as e:
                outage.failed(e)
            await asyncio.sleep(backoff.next())

    async def _drain_once(self) -> None:
        spool = self.spool
        assert spool is not None
        sent = 0
        while True:
            if not self.link_up():
                await self._wait_link()
            item = spool.next()
            if item is None:
                self.engaged = False
                if sent:
                    log.warning(
                        "edge %s -> %s: spool drained, %d message(s) sent; %.1f s since spooling began",
                        self.o.producer,
                        self.o.peers.get(self.topic, self.topic),
                        sent,
                        time.monotonic() - self._since,
                    )
                return
            if isinstance(item, Entry):
                payload = item.payload
                if self._gen_mark not in payload[:256]:
                    payload = restamp(payload, self.o.generation)  # left by an earlier copy
            else:
                payload = encode_skip(self.o.producer, self.o.generation, item.first, item.last)
            await self.o.mqtt.wait_for_window()
            await self.o.wait_credit(self.topic, item.last)
            self.unconfirmed.add(item.last, payload)
            self.o.track(self.o.mqtt.publish(self.topic, payload, qos=1))
            self.o.count(self.topic, len(payload))
            sent += 1
            if sent % 64 == 0:
                await asyncio.sleep(0)

    # ---------------------------------------------------------------- room, release

    @property
    def blocked(self) -> bool:
        """The producing task must wait: ``block`` and the spool is at its limit."""
        s = self.spool
        return s is not None and self.engaged and s.overflow == "block" and s.full(0)

    def release(self, hwm: int) -> None:
        if self.spool is not None:
            self.spool.release(hwm)

    def sync(self) -> None:
        if self.spool is not None:
            self.spool.sync()

    async def close(self, *, remove: bool) -> None:
        if self._drainer is not None:
            self._drainer.cancel()
            await asyncio.gather(self._drainer, return_exceptions=True)
        if self.spool is not None:
            self.spool.close(remove=remove)

    def counts(self) -> tuple[int, int, int]:
        """Messages spooled by this copy, bytes on disk now, records dropped."""
        s = self.spool
        return (self.spooled, s.size, s.dropped) if s is not None else (0, 0, 0)
