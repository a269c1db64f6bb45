"""The agent's NATS logins, shared by the tasks whose channels they may carry.

NATS fixes a connection's permissions when it logs in: the master's auth callout answers
with the device's permissions at that moment, which are exactly the channels of the tasks
it has been granted. So a task may use a login only if the login began after the task's
grant was stored. The agent knows two moments that come after it:

- the master stores a deployment wave's grants, then tells each device concerned
  (``LoginAhead``), then sends the wave's commands: a login begun on that notice carries
  every task of the wave (``DeployTask.wave`` names it), and it runs while the master is
  still preparing and sending the wave;
- a task's command is sent after its grant: a login begun after the command arrived
  carries the task (moves, failovers and retries, which come without a notice).

``NatsLogins`` keeps to that rule with as few logins as it can: a task joins the login
begun for its wave, or the newest login if that began after its command arrived, and
begins one otherwise. A 10-task deployment on four agents made five NATS logins, each a
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
        self.wave: str | None = None  # begun ahead of this deployment wave (``NatsLogins.ahead``)
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
        self.nc, self.js = nc, nc.jetstream()
        self.kv = await self._lookup()

    async def _lookup(self) -> KeyValue:
        """The data stream and progress bucket, which the master prepares: a device may only
        look them up. (A privileged client without a master, e.g. a test, creates them.)"""
        assert self.js is not None
        try:  # at once: two round trips on every deployment's path
            _, kv = await asyncio.gather(
                self.js.stream_info(self.names.data_stream), self.js.key_value(self.names.progress_bucket)
            )
            return kv
        except (NotFoundError, BucketNotFoundError):
            try:
                await ensure_data_plane(self.js, self.names)
                return await self.js.key_value(self.names.progress_bucket)
            except Exception as e:
                raise NatsUnavailable(
                    f"the NATS data stream {self.names.data_stream} is missing (the master creates it): {e}"
                ) from e

    @property
    def connected(self) -> bool:
        return self.nc is not None and self.nc.is_connected

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
        backoff = Backoff(0.2, 5.0)
        while not self.closing:
            try:
                await self.start(timeout=5.0)
                break
            except Exception as e:
                log.debug("nats %s: cannot open a new connection: %s", self.name, e)
                await asyncio.sleep(backoff.next())  # the retry's pace; closing ends it
        else:
            return
        results = await asyncio.gather(*(u.relinked() for u in list(self.users)), return_exceptions=True)
        failed = [r for r in results if isinstance(r, BaseException)]
        if failed:
            log.warning(
                "nats %s: %d task(s) could not subscribe again: %s", self.name, len(failed), failed[0]
            )
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
        nc, self.nc = self.nc, None
        if nc is not None:
            with contextlib.suppress(Exception):  # publishes were awaited and acks sent: no drain
                async with asyncio.timeout(timeout):
                    await nc.close()


AHEAD_HELD = 5.0  # seconds a login begun ahead of a wave stays open for its tasks to join


def _usable(link: NatsLink | None, since: float, wave: str | None) -> bool:
    """``link`` can carry a task whose command arrived at ``since``, of ``wave``."""
    if link is None or link.closing:
        return False
    ready = link.ready
    if ready is not None and ready.done() and (ready.cancelled() or ready.exception() is not None):
        return False
    return link.began >= since or (wave is not None and link.wave == wave)


class NatsLogins:
    """A device's NATS logins (see the module's docstring). ``name``: the connections'
    name prefix, numbered per login."""

    def __init__(self, url: str, names: Names, name: str, options: dict[str, Any] | None = None) -> None:
        self.url = url
        self.names = names
        self.name = name
        self._options = dict(options or {})
        self._newest: NatsLink | None = None
        self._ahead: dict[str, NatsLink] = {}  # wave -> the login begun for it
        self._links: set[NatsLink] = set()
        self._closings: set[asyncio.Future[None]] = set()
        self._count = 0
        self.logins = 0  # logins opened (a figure for tests and benchmarks)

    @property
    def links(self) -> set[NatsLink]:
        return set(self._links)

    def _begin(self, timeout: float, wave: str | None = None) -> NatsLink:
        self._count += 1
        self.logins += 1
        name = self.name if self._count == 1 else f"{self.name}-{self._count}"
        link = NatsLink(self.url, self.names, name, dict(self._options), asyncio.get_running_loop().time())
        link.wave = wave
        link.ready = asyncio.ensure_future(link.start(timeout))
        link.ready.add_done_callback(lambda f: f.cancelled() or f.exception())  # awaited by users
        self._newest = link
        self._links.add(link)
        if wave is not None:
            self._ahead[wave] = link
        return link

    def ahead(self, wave: str, timeout: float = 10.0) -> None:
        """The master granted ``wave``'s channels: begin the login its tasks will share
        (``LoginAhead``). Held open ``AHEAD_HELD`` seconds for them to join."""
        if wave in self._ahead:
            return  # a repeated notice
        link = self._begin(timeout, wave)
        link.held = True

        def unhold() -> None:
            link.held = False
            if not link.users and link in self._links:
                closing = asyncio.ensure_future(self._close(link))
                self._closings.add(closing)
                closing.add_done_callback(self._closings.discard)

        asyncio.get_running_loop().call_later(AHEAD_HELD, unhold)

    async def acquire(
        self, user: LinkUser, since: float, timeout: float = 10.0, wave: str | None = None
    ) -> NatsLink:
        """A connected login that carries the user's channels: begun at ``since`` or later
        (the loop time its command arrived), or ahead of its ``wave``. ``user`` hears of its
        reconnects until ``release``."""
        link = self._ahead.get(wave) if wave is not None else None
        if not _usable(link, since, wave):
            link = self._newest
        if link is None or not _usable(link, since, wave):
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
        if not link.users and not link.held:
            await self._close(link)

    async def _close(self, link: NatsLink) -> None:
        if self._newest is link:
            self._newest = None
        if link.wave is not None and self._ahead.get(link.wave) is link:
            del self._ahead[link.wave]
        self._links.discard(link)
        if link.ready is not None and not link.ready.done():
            link.ready.cancel()
        with contextlib.suppress(BaseException):
            if link.ready is not None:
                await link.ready
        await link.close()

    def relogin(self, user: str, password: str) -> None:
        """New credentials: every login uses them from its next connect."""
        self._options.update(user=user, password=password)
        for link in self._links:
            link.relogin(user, password)

    async def close(self) -> None:
        links, self._links, self._newest, self._ahead = list(self._links), set(), None, {}
        for link in links:
            link.users.clear()
        await asyncio.gather(*(link.close() for link in links), return_exceptions=True)


__all__ = ["LinkUser", "NatsLink", "NatsLogins", "NatsUnavailable"]
