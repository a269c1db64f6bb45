"""Running a service process: signals, logging, tracing and one clean shutdown path.

A service's ``__main__`` builds its settings and calls ``run_service(name, main)``;
``main(stop)`` runs the service's supervisor (a TaskGroup) until ``stop`` is set by
SIGTERM/SIGINT, then shuts down in order (stop taking work, drain, cancel).
"""

from __future__ import annotations

import asyncio
import logging
import signal
import sys
from collections.abc import Awaitable, Callable

from .errors import EchoError
from .logs import setup_logging
from .telemetry import setup_tracing, shutdown_tracing

log = logging.getLogger(__name__)

# How long a thread may hold the GIL while another waits (CPython's default: 5 ms). A
# service's event loop shares its process with a few threads (the master's NATS auth
# callout, thread-pool work, exporters); with the default, each socket call of the loop
# that released the GIL could wait up to 5 ms to get it back, and a deployment pays that
# on every Redis and broker round trip (measured: 10-task deploy p50 ~120 ms -> ~97 ms).
GIL_SWITCH_INTERVAL = 0.0005


def run_service(
    name: str,
    main: Callable[[asyncio.Event], Awaitable[None]],
    *,
    log_level: str = "INFO",
    attributes: dict[str, str] | None = None,
) -> int:
    sys.setswitchinterval(GIL_SWITCH_INTERVAL)
    setup_logging(name, log_level)
    setup_tracing(name, attributes=attributes)

    async def runner() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()

        def on_signal(sig: signal.Signals) -> None:
            if stop.is_set():
                log.info("%s already stopping; ignoring %s", name, sig.name)
            stop.set()

        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, on_signal, sig)
        await main(stop)

    code = 0
    try:
        asyncio.run(runner())
    except EchoError as e:  # an expected failure (refused credentials, duplicate device): one line
        log.error("%s failed: %s", name, e)
        code = 1
    except Exception:
        log.exception("%s failed", name)
        code = 1
    finally:
        # the loop and its handlers are gone: a late signal must not kill the teardown
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, signal.SIG_IGN)
        shutdown_tracing()
    log.info("%s stopped", name)
    return code


async def wait_or_stop(stop: asyncio.Event, timeout: float) -> bool:
    """Sleep up to ``timeout`` seconds; True if ``stop`` was set meanwhile."""
    try:
        async with asyncio.timeout(timeout):  # not wait_for: it can swallow a cancel (3.11)
            await stop.wait()
        return True
    except TimeoutError:
        return False
