"""Submitting a spec file and following a dataflow until it settles (``submit --watch``)."""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.live import Live
from rich.markup import escape

from echo_shared.documents import DocumentError, load_document

from .client import CliError, EchoClient, content_type_for
from .render import state, stdout, watch_view

SETTLED = frozenset({"running", "completed", "failed", "stopped"})
SUCCESS = frozenset({"running", "completed"})
WATCH_INTERVAL = 0.5  # seconds between two GETs of a watched dataflow


def read_spec_file(path: str) -> bytes:
    """The bytes of a spec file, or of stdin for ``-``."""
    if path == "-":
        return sys.stdin.buffer.read()
    p = Path(path)
    try:
        return p.read_bytes()
    except FileNotFoundError as e:
        raise CliError(f"no such file: {path}") from e
    except IsADirectoryError as e:
        raise CliError(f"{path} is a directory, not a dataflow spec") from e
    except OSError as e:
        raise CliError(f"cannot read {path}: {e.strerror or e}") from e


def submit_file(client: EchoClient, path: str) -> tuple[str, str, bytes]:
    """POST the spec at ``path``; returns (id, state, the spec's bytes)."""
    body = read_spec_file(path)
    created = client.submit(body, content_type_for(path)).json()
    return str(created["id"]), str(created.get("state", "pending")), body


def watch_dataflow(
    client: EchoClient, df_id: str, *, interval: float | None = None, console: Console | None = None
) -> dict[str, Any]:
    """Show the tasks of a dataflow live until its state is one of ``SETTLED``; return the last view.

    On a terminal the table updates in place; otherwise (a pipe, a log file) one line per
    state change is printed and the final table once at the end.
    """
    con = console or stdout()
    interval = WATCH_INTERVAL if interval is None else interval
    df: dict[str, Any] = client.get_dataflow(df_id).json()
    if con.is_terminal:
        with Live(watch_view(df), console=con, refresh_per_second=4) as live:
            while df.get("state") not in SETTLED:
                time.sleep(interval)  # the polling interval of the API, i.e. the refresh rate
                df = client.get_dataflow(df_id).json()
                live.update(watch_view(df))
        return df
    last = None
    while True:
        if df.get("state") != last:
            last = df.get("state")
            con.print(f"{time.strftime('%H:%M:%S')} dataflow {escape(df_id)}: ", state(last), sep="")
        if last in SETTLED:
            break
        time.sleep(interval)
        df = client.get_dataflow(df_id).json()
    con.print(watch_view(df))
    return df


def print_outcome(df: dict[str, Any], console: Console | None = None) -> None:
    con = console or stdout()
    line = f"dataflow {escape(str(df.get('id')))} is "
    reason = f" ({escape(str(df['reason']))})" if df.get("reason") else ""
    con.print(line, state(df.get("state")), reason, sep="")


@dataclass(frozen=True)
class SinkOutput:
    task: str
    path: Path
    device: str | None


def file_sinks(spec_body: bytes, df: dict[str, Any], base: Path) -> list[SinkOutput]:
    """Where the ``io.file_sink`` tasks of a spec write (relative paths resolved against ``base``)."""
    try:
        spec = load_document(spec_body)
    except DocumentError:
        return []
    if not isinstance(spec, dict):
        return []
    devices = {t.get("id"): t.get("device") for t in df.get("tasks") or []}
    out = []
    for task in spec.get("tasks") or []:
        if not isinstance(task, dict) or task.get("operator") != "io.file_sink":
            continue
        raw = (task.get("config") or {}).get("path")
        if not isinstance(raw, str) or not raw:
            continue
        p = Path(raw).expanduser()
        where = p if p.is_absolute() else base / p
        out.append(SinkOutput(str(task.get("id")), where, devices.get(task.get("id"))))
    return out
