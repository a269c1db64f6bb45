"""The NATS auth callout on a thread of its own, with its own event loop and connections.

Every task of a NATS-reaching device opens its NATS connection when it deploys, and the
server holds that connection until the callout answers. On the master's event loop the
answer would queue behind the deployment wave that caused it (commands, acks, status
reports): measured 10-18 ms per login during a 10-task deploy. Here it waits for nothing
but Redis. The thread owns its NATS and Redis connections; ``close()`` stops its loop and
joins it (time-limited, idempotent).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading

import nats

from echo_shared.credentials import Access
from echo_shared.errors import BrokerUnavailable
from echo_shared.names import Names
from echo_shared.nats_bus import connection_callbacks, nats_servers
from echo_shared.natsauth import APP_ACCOUNT, AuthCallout
from echo_shared.redis_store import connect_redis

from .identities import IdentityStore
from .nats_logins import DeviceNatsLogins

log = logging.getLogger(__name__)


class CalloutThread:
    def __init__(
        self, access: Access, names: Names, issuer_seed: str, *, name: str = "echo-master-callout"
    ) -> None:
        self.access = access
        self.names = names
        self._seed = issuer_seed
        self._name = name
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None

    async def start(self, timeout: float = 30.0) -> None:
        self._thread = threading.Thread(target=self._run, name=self._name, daemon=True)
        self._thread.start()
        ready = await asyncio.to_thread(self._ready.wait, timeout)
        if self._error is not None:
            raise BrokerUnavailable(f"the NATS auth callout could not start: {self._error}") from self._error
        if not ready:
            raise BrokerUnavailable(f"the NATS auth callout did not start within {timeout}s")

    def _run(self) -> None:
        try:
            asyncio.run(self._main())
        except BaseException as e:  # reported to start(), or logged once if it dies later
            if not self._ready.is_set():
                self._error = e
                self._ready.set()
            else:
                log.error("the NATS auth callout stopped: %s", e)

    async def _main(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        assert self.access.nats_url and self.access.redis_url
        redis = await connect_redis(self.access.redis_url, access=self.access, max_connections=8)
        try:
            nc = await nats.connect(
                nats_servers(self.access.nats_url),
                name=self._name,
                max_reconnect_attempts=-1,
                reconnect_time_wait=0.5,
                **connection_callbacks(self._name),
                **self.access.nats_options(),
            )
            try:
                logins = DeviceNatsLogins(IdentityStore(redis, self.names), self.names)
                callout = AuthCallout(
                    nc,
                    self._seed,
                    APP_ACCOUNT,
                    logins.authorize,
                    queue=self.names.callout_queue,
                    owns=self.names.owns_username,
                )
                async with callout:
                    self._ready.set()
                    await self._stop.wait()
            finally:
                with contextlib.suppress(Exception):
                    await nc.close()
        finally:
            await redis.aclose()

    async def close(self, timeout: float = 5.0) -> None:
        loop, stop, thread = self._loop, self._stop, self._thread
        if loop is not None and stop is not None and not loop.is_closed():
            with contextlib.suppress(RuntimeError):  # its loop ended already
                loop.call_soon_threadsafe(stop.set)
        if thread is not None:
            await asyncio.to_thread(thread.join, timeout)
            self._thread = None
