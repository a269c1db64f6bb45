"""Many emulated devices in one process, for ``fleet.py``: each is the real agent
(``echo_agent.app.run``: its own enrolment, control and data connections, will,
registration, heartbeats, task manager and tasks), all on one event loop.

``python bench/fleet_agents.py --tokens FILE --workdir DIR --heartbeat S``; the platform's
agent environment (``ECHO_MQTT_URL``, ``ECHO_API_URL``, ``ECHO_CA_FILE``, ...) comes from the
parent. ``FILE`` (0600, JSON ``{device: one-time token}``) lists the devices this process
runs; it is deleted once read. Prints ``enrolled N`` and ``started N`` lines on stdout and
runs until SIGTERM, then stops every agent cleanly (their goodbyes included).

What differs from a device: the utilisation each reports is the host's (``psutil``'s
system-wide figure, read once per heartbeat); programs (``process``/``container``) are not
enabled. Everything on the wire is what a device sends.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import resource
import signal
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from echo_agent import app, identity
from echo_agent.settings import AgentSettings
from echo_shared.credentials import Credentials

log = logging.getLogger("fleet-agents")
ENROL_THREADS = 4


def settings_of(device: str, workdir: Path, heartbeat: float) -> AgentSettings:
    return AgentSettings(
        device_id=device,
        tier="edge",
        cpu=1.0,
        memory_mb=512,
        data_dir=workdir / device / "data",
        state_dir=workdir / device / "state",
        heartbeat_interval=heartbeat,
        utilisation="host",
        brokers=["mqtt"],
    )


def enrol_all(devices: dict[str, str], workdir: Path, heartbeat: float) -> dict[str, Credentials]:
    def one(item: tuple[str, str]) -> tuple[str, Credentials]:
        device, token = item
        creds = identity.load_or_enrol(settings_of(device, workdir, heartbeat), token)
        assert creds is not None
        return device, creds

    with ThreadPoolExecutor(ENROL_THREADS) as pool:
        return dict(pool.map(one, devices.items()))


async def run_all(creds: dict[str, Credentials], workdir: Path, heartbeat: float, stagger: float) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGINT, stop.set)
    agents: list[asyncio.Task[None]] = []
    for device, c in creds.items():
        agents.append(asyncio.create_task(app.run(settings_of(device, workdir, heartbeat), stop, c)))
        # spread the connects (and so the heartbeats) over the interval, as a real fleet's are
        if await _stopped(stop, stagger):
            break
    print(f"started {len(agents)}", flush=True)
    results = await asyncio.gather(*agents, return_exceptions=True)
    failed = [r for r in results if isinstance(r, BaseException)]
    if failed:
        log.error("%d agents ended with an error, first: %r", len(failed), failed[0])


async def _stopped(stop: asyncio.Event, seconds: float) -> bool:
    try:
        await asyncio.wait_for(stop.wait(), seconds)
    except TimeoutError:
        return False
    return True


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--tokens", type=Path, required=True)
    p.add_argument("--workdir", type=Path, required=True)
    p.add_argument("--heartbeat", type=float, default=1.0)
    p.add_argument("--stagger", type=float, default=0.0, help="seconds between two agents' starts")
    a = p.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    devices: dict[str, str] = json.loads(a.tokens.read_text())
    a.tokens.unlink()
    t0 = time.monotonic()
    creds = enrol_all(devices, a.workdir, a.heartbeat)
    print(f"enrolled {len(creds)} {time.monotonic() - t0:.3f}", flush=True)
    asyncio.run(run_all(creds, a.workdir, a.heartbeat, a.stagger))
    return 0


if __name__ == "__main__":
    os.umask(0o077)
    sys.exit(main())
