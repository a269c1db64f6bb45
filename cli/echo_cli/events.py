"""``echoctl get events -w``: the events so far, then new ones as they come."""

from __future__ import annotations

import json
import time
from typing import Any

from .client import EchoClient
from .render import events_table, stdout

POLL_S = 1.0  # seconds between two looks for new events


def follow_events(
    client: EchoClient,
    *,
    dataflow: str | None,
    device: str | None,
    since: str | None,
    limit: int,
    json_lines: bool,
    rounds: int | None = None,
) -> None:
    """Print the newest ``limit`` events, then every new one (JSON lines with ``json_lines``)
    until interrupted (or ``rounds`` polls: tests)."""
    out = stdout()
    events: list[dict[str, Any]] = client.events(
        dataflow=dataflow, device=device, since=since, limit=limit
    ).json()
    header = True
    last: str | None = None
    n = 0
    while True:
        if events:
            if json_lines:
                for e in events:
                    print(json.dumps(e), flush=True)
            else:
                out.print(events_table(events, header=header))
                header = False
            last = str(events[-1]["id"])
        n += 1
        if rounds is not None and n >= rounds:
            return
        time.sleep(POLL_S)
        if last is None:  # nothing yet: from now on
            events = client.events(dataflow=dataflow, device=device, since=since, limit=limit).json()
        else:
            events = client.events(dataflow=dataflow, device=device, after=last, limit=1000).json()
