"""``echoctl migrate``, ``echoctl rebalance``, ``echoctl get migrations|migration|decisions``:
rendering of migrations (each step with its timing) and of the rebalancer's decisions."""

from __future__ import annotations

import time
from typing import Any

from rich.console import Group, RenderableType
from rich.table import Table
from rich.text import Text

from .client import EchoClient
from .render import state

FINISHED = {"completed", "failed", "rolled_back"}


def _ms(v: Any) -> str:
    return "-" if v is None else f"{float(v):.0f} ms"


def migration_detail(m: dict[str, Any]) -> RenderableType:
    head = Text.assemble(
        (f"{m['id']}", "bold"),
        f"  {m['dataflow']}/{m['task']}  {m.get('source') or '-'} -> {m.get('target') or '?'}  ",
        state(m["state"]),
        f"  ({m.get('origin', '')}: {m.get('reason', '')})",
    )
    t = Table(box=None, pad_edge=False)
    for col in ("STEP", "STATE", "TOOK", "DETAIL"):
        t.add_column(col)
    for s in m.get("steps", []):
        t.add_row(s["name"], state(s["state"]), _ms(s.get("ms")), s.get("detail", ""))
    parts: list[RenderableType] = [head, t]
    if m.get("error"):
        parts.append(Text(f"error: {m['error']}", style="red"))
    return Group(*parts)


def migrations_table(ms: list[dict[str, Any]]) -> RenderableType:
    t = Table(box=None, pad_edge=False)
    for col in ("MIGRATION", "DATAFLOW", "TASK", "FROM", "TO", "STATE", "ORIGIN", "TOOK"):
        t.add_column(col)
    for m in ms:
        took = sum(float(s["ms"]) for s in m.get("steps", []) if s.get("ms") is not None)
        t.add_row(
            m["id"],
            m["dataflow"],
            m["task"],
            m.get("source") or "-",
            m.get("target") or "-",
            state(m["state"]),
            m.get("origin", ""),
            _ms(took),
        )
    return t


def decisions_table(ds: list[dict[str, Any]]) -> RenderableType:
    t = Table(box=None, pad_edge=False)
    for col in ("WHEN", "DEVICE", "ACTION", "TASK", "MIGRATION", "REASON"):
        t.add_column(col)
    for d in ds:
        when = time.strftime("%H:%M:%S", time.localtime(float(d["ts"])))
        t.add_row(
            when, d["device"], d["action"], d.get("task") or "-", d.get("migration") or "-", d["reason"]
        )
    return t


def wait_for(client: EchoClient, mid: str, timeout: float) -> dict[str, Any]:
    """Poll the migration until it finished (or the timeout); returns its last state."""
    deadline = time.monotonic() + timeout
    while True:
        m: dict[str, Any] = client.get_migration(mid).json()
        if m["state"] in FINISHED or time.monotonic() >= deadline:
            return m
        time.sleep(0.2)  # polling the API: a CLI has nothing else to wait on
