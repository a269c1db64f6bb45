"""The agent's NATS logins, shared by the tasks whose channels they may carry.

NATS fixes a connection's permissions when it logs in: the master's auth callout answers
with the device's permissions at that moment, which are exactly the channels of the tasks
it has been granted. So a task may use a login only if the login began after the task's
grant was stored. The agent knows two moments that come after it:

- the master stores a deployment wave's grants, then tells each device concerned which of
  its deploy commands they are (``LoginAhead``), then sends them: a login begun on that
  notice carries every one of those tasks, and it runs while the master is still
  preparing and sending the wave;
- a task's command is sent after its grant: a login begun after the command arrived
  carries the task (moves, failovers and retries, which come without a notice).

``NatsLogins`` keeps to that rule with as few logins as it can: a task joins the login
begun ahead of its command, or the newest login if that began after its command arrived,
and begins one otherwise. A 10-task deployment on four agents made five NATS logins, each a
TCP and TLS handshake and a round trip through the callout (10-27 ms, with three at once
on one agent), each after its task's command; now one per agent and wave, begun ahead.
A login lasts while a task uses it (one begun ahead is held a few seconds for its tasks
to come); the last one out closes it. Sharing gives a task no permission it lacked: every
login carries all of the device's channels at its time, whichever task opened it.

``NatsLink`` is one such login: the connection, its JetStream context and the progress
bucket. Its users (``NatsChannels``, one per task) keep their own subscriptions; the link
tells them when the connection came back after a server restart (``reconnected``) and
when a new connection replaced one the server closed for good (``relinked``: nats-py
gives up after an ``Authorization Violation``, which a login through the callout can meet
while everything reconnects at once).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
from typing import Any, Protocol

import nats
from nats.aio.client import Client as NatsClient
from nats.js import JetStreamContext
from nats.js.errors import BucketNotFoundError, NotFoundError
from nats.js.kv import KeyValue

from echo_shared.names import Names
from echo_shared.nats_bus import connection_callbacks, ensure_data_plane, nats_servers
from echo_shared.outage import Backoff

log = logging.getLogger(__name__)


class NatsUnavailable(OSError):
    pass


class LinkUser(Protocol):
    async def reconnected(self) -> None:
        """The connection is back after an outage (same connection, subscriptions kept)."""

    async def relinked(self) -> None:
        """A new connection replaced one closed for good: subscribe again on it."""


class NatsLink:
    def __init__(self, url: str, names: Names, name: str, options: dict[str, Any], began: float) -> None:
        self.url = url
        self.names = names
        self.name = name
        self.options = options
        self.began = began  # loop time the login began: it carries grants made before
        self.nc: NatsClient | None = None
        self.js: JetStreamContext | None = None
        self.kv: KeyValue | None = None
        self.users: set[LinkUser] = set()
        self.ready: asyncio.Future[None] | None = None
        self.commands: set[str] = set()  # begun ahead of these deploy commands (``LoginAhead``)
        self.held = False  # kept open without users for a while (a wave's tasks still to join)
        self.closing = False
        self._reopening: asyncio.Task[None] | None = None

    async def start(self, timeout: float = 10.0) -> None:
        try:
            nc = await nats.connect(
                nats_servers(self.url),
                name=self.name,
                connect_timeout=timeout,
                max_reconnect_attempts=-1,
                reconnect_time_wait=0.5,
                closed_cb=self._closed,
                **connection_callbacks(
                    self.name, on_reconnect=self._reconnected, closing=lambda: self.closing
                ),
                **self.options,
            )
        except Exception as e:
            raise NatsUnavailable(f"NATS at {self.url} unreachable: {e}") from e
        try:
            js = nc.jetstream()
            kv = await self._lookup(js)
        except BaseException:
            with contextlib.suppress(Exception):
                await nc.close()
            raise
        self.nc, self.js, self.kv = nc, js, kv

    async def _lookup(self, js: JetStreamContext) -> KeyValue:
        """The data stream and progress bucket, which the master prepares: a device may only
        look them up. (A privileged client without a master, e.g. a test, creates them.)"""
        try:  # at once: two round trips on every deployment's path
            _, kv = await asyncio.gather(
                js.stream_info(self.names.data_stream), js.key_value(self.names.progress_bucket)
            )
            return kv
        except (NotFoundError, BucketNotFoundError):
            try:
                await ensure_data_plane(js, self.names)
                return await js.key_value(self.names.progress_bucket)
            except Exception as e:
                raise NatsUnavailable(
                    f"the NATS data stream {self.names.data_stream} is missing (the master creates it): {e}"
                ) from e

    @property
    def connected(self) -> bool:
        return self.nc is not None and self.nc.is_connected

    @property
    def replacing(self) -> bool:
        """The server closed the connection for good, and a new one is being opened."""
        reopening = self._reopening is not None and not self._reopening.done()
        return reopening or (self.nc is not None and self.nc.is_closed)

    async def _reconnected(self) -> None:
        if not self.closing:
            await asyncio.gather(*(u.reconnected() for u in list(self.users)), return_exceptions=True)

    async def _closed(self) -> None:
        """The connection ended for good: unless we close, open a new one."""
        if self.closing or (self._reopening is not None and not self._reopening.done()):
            return
        err = getattr(self.nc, "last_error", None) if self.nc is not None else None
        log.warning(
            "nats %s: the connection was closed (%s); opening a new one",
            self.name,
            f"{type(err).__name__}: {err}" if err is not None else "no error given",
        )
        self._reopening = asyncio.create_task(self._reopen(), name=f"reopen-{self.name}")

    async def _reopen(self) -> None:
        """A new connection, then every user's subscriptions on it: each user again until it
        has them (or leaves), as a task whose subscriptions failed would be deaf for good."""
        backoff = Backoff(0.2, 5.0)
        while not self.closing:
            try:
                await self.start(timeout=5.0)
                break
            except Exception as e:
                log.debug("nats %s: cannot open a new connection: %s", self.name, e)
                await asyncio.sleep(backoff.next())  # the retry's pace; closing ends it
        backoff.reset()
        pending, said = list(self.users), False
        while pending and not self.closing:
            results = await asyncio.gather(*(u.relinked() for u in pending), return_exceptions=True)
            failed = [u for u, r in zip(pending, results, strict=True) if isinstance(r, Exception)]
            pending = [u for u in failed if u in self.users]
            if pending and not said:
                said = True
                first = next(r for r in results if isinstance(r, Exception))
                log.warning(
                    "nats %s: %d task(s) could not subscribe again (%s); trying again",
                    self.name,
                    len(pending),
                    first,
                )
            if pending:
                await asyncio.sleep(backoff.next())  # the retry's pace; closing ends it
        if not self.closing:
            log.warning("nats %s: a new connection took over every subscription", self.name)

    def relogin(self, user: str, password: str) -> None:
        """Use a new login from the next reconnect on (nats-py sends ``options`` at each)."""
        self.options = {**self.options, "user": user, "password": password}
        if self.nc is not None:
            self.nc.options["user"] = user
            self.nc.options["password"] = password

    async def close(self, timeout: float = 2.0) -> None:
        self.closing = True
        if self._reopening is not None and not self._reopening.done():
            self._reopening.cancel()
        if self.ready is not None and not self.ready.done():
            self.ready.cancel()
        if self.ready is not None:
            with contextlib.suppress(BaseException):
                await self.ready
        nc, self.nc = self.nc, None
        if nc is not None:
            with contextlib.suppress(Exception):  # publishes were awaited and acks sent: no drain
                async with asyncio.timeout(timeout):
                    await nc.close()


AHEAD_HELD = 5.0  # seconds a login begun ahead of a wave stays open for its tasks to join
AHEAD_KEPT = 4096  # deploy commands remembered as begun ahead (each wave's, until they come)


def _usable(link: NatsLink | None, since: float, cmd_id: str | None) -> bool:
    """``link`` can carry a task whose command ``cmd_id`` arrived at ``since``."""
    if link is None or link.closing or link.replacing:
        return False
    ready = link.ready
    if ready is not None and ready.done() and (ready.cancelled() or ready.exception() is not None):
        return False
    return link.began > since or (cmd_id is not None and cmd_id in link.commands)


class NatsLogins:
    """A device's NATS logins (see the module's docstring). ``name``: the connections'
    name prefix, numbered per login."""

    def __init__(self, url: str, names: Names, name: str, options: dict[str, Any] | None = None) -> None:
        self.url = url
        self.names = names
        self.name = name
        self._options = dict(options or {})
        self._newest: NatsLink | None = None
        self._ahead: collections.OrderedDict[str, NatsLink] = collections.OrderedDict()  # cmd_id ->
        self._links: set[NatsLink] = set()
        self._closings: set[asyncio.Future[None]] = set()
        self._count = 0
        self.logins = 0  # logins opened (a figure for tests and benchmarks)

    @property
    def links(self) -> set[NatsLink]:
        return set(self._links)

    def _begin(self, timeout: float) -> NatsLink:
        self._count += 1
        self.logins += 1
        name = self.name if self._count == 1 else f"{self.name}-{self._count}"
        link = NatsLink(self.url, self.names, name, dict(self._options), asyncio.get_running_loop().time())
        link.ready = asyncio.ensure_future(link.start(timeout))
        link.ready.add_done_callback(lambda f: f.cancelled() or f.exception())  # awaited by users
        self._newest = link
        self._links.add(link)
        return link

    def ahead(self, commands: list[str], timeout: float = 10.0) -> None:
        """The master stored the grants of a wave whose deploy ``commands`` (their ids) come
        next: begin the login they will share (``LoginAhead``), held ``AHEAD_HELD`` seconds
        for them to join."""
        if not commands or all(c in self._ahead for c in commands):
            return  # nothing to carry, or a repeated notice
        link = self._begin(timeout)
        link.commands = set(commands)
        for c in commands:
            self._ahead[c] = link
            self._ahead.move_to_end(c)
        while len(self._ahead) > AHEAD_KEPT:
            self._ahead.popitem(last=False)
        link.held = True

        def unhold() -> None:
            link.held = False
            if not link.users and link in self._links:
                self._later_close(link)

        asyncio.get_running_loop().call_later(AHEAD_HELD, unhold)

    async def acquire(
        self, user: LinkUser, since: float, timeout: float = 10.0, cmd_id: str | None = None
    ) -> NatsLink:
        """A connected login that carries the user's channels: begun after ``since`` (the
        loop time its command arrived), or ahead of its command ``cmd_id``. ``user`` hears of
        its reconnects until ``release``."""
        link = self._ahead.get(cmd_id) if cmd_id is not None else None
        if not _usable(link, since, cmd_id):
            link = self._newest
        if link is None or not _usable(link, since, cmd_id):
            link = self._begin(timeout)
        assert link.ready is not None
        link.users.add(user)
        try:
            await asyncio.shield(link.ready)
        except BaseException:
            await self.release(link, user)
            raise
        return link

    async def release(self, link: NatsLink, user: LinkUser) -> None:
        """``user`` is done with ``link``: the last one out closes it."""
        link.users.discard(user)
        if not link.users and not link.held and link in self._links:
            self._retire(link)
            await link.close()

    def _retire(self, link: NatsLink) -> None:
        """No task may join ``link`` from now on (done at once: a task may be joining)."""
        link.closing = True
        if self._newest is link:
            self._newest = None
        for c in link.commands:
            if self._ahead.get(c) is link:
                del self._ahead[c]
        self._links.discard(link)

    def _later_close(self, link: NatsLink) -> None:
        self._retire(link)
        closing = asyncio.ensure_future(link.close())
        self._closings.add(closing)
        closing.add_done_callback(self._closings.discard)

    def relogin(self, user: str, password: str) -> None:
        """New credentials: every login uses them from its next connect."""
        self._options.update(user=user, password=password)
        for link in self._links:
            link.relogin(user, password)

    async def close(self) -> None:
        for link in list(self._links):
            link.users.clear()
            self._later_close(link)
        await asyncio.gather(*self._closings, return_exceptions=True)


__all__ = ["LinkUser", "NatsLink", "NatsLogins", "NatsUnavailable"]
