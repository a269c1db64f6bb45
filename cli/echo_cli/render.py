"""Rich tables for what the API returns (dataflows, tasks, devices) and error messages."""

from __future__ import annotations

import json
import os
import time
import urllib.parse
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

from rich.console import Console, Group, RenderableType
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from .client import CliError

STATE_STYLES = {
    "pending": "yellow",
    "scheduled": "yellow",
    "deploying": "yellow",
    "running": "green",
    "finished": "cyan",
    "completed": "cyan",
    "stopping": "magenta",
    "stopped": "dim",
    "failed": "bold red",
    "online": "green",
    "unreachable": "yellow",
    "lost": "bold red",
}


PIPE_WIDTH = 160  # when the output is not a terminal (a pipe, a log), don't fold tables at 80 columns


def _console(*, stderr: bool) -> Console:
    con = Console(stderr=stderr, highlight=False)
    if not con.is_terminal and "COLUMNS" not in os.environ:
        con.width = PIPE_WIDTH
    return con


def stdout() -> Console:
    # built per call so it writes to whatever sys.stdout is now (CliRunner swaps it)
    return _console(stderr=False)


def stderr() -> Console:
    return _console(stderr=True)


def state(value: Any) -> Text:
    s = str(value) if value is not None else "-"
    return Text(s, style=STATE_STYLES.get(s, ""))


def age(ts: Any, now: float | None = None) -> str:
    if not isinstance(ts, int | float) or ts <= 0:
        return "-"
    secs = max(0.0, (now if now is not None else time.time()) - float(ts))
    if secs < 60:
        return f"{secs:.0f}s"
    if secs < 3600:
        return f"{secs // 60:.0f}m{secs % 60:02.0f}s"
    if secs < 86400:
        return f"{secs // 3600:.0f}h{(secs % 3600) // 60:02.0f}m"
    return f"{secs // 86400:.0f}d{(secs % 86400) // 3600:.0f}h"


def _pct(v: Any) -> str:
    return f"{v:.0f}%" if isinstance(v, int | float) else "-"


def _str(v: Any) -> str:
    return "-" if v is None or v == "" else str(v)


def print_error(err: CliError | str, *, context: str = "") -> None:
    con = stderr()
    where = f"{escape(context)}: " if context else ""
    con.print(f"[bold red]error:[/] {where}{escape(str(err))}", soft_wrap=True)
    if isinstance(err, CliError):
        for line in err.details():
            con.print(f"  [red]{escape(line)}[/]", soft_wrap=True)


# ------------------------------------------------------------------------ dataflows


def dataflows_table(items: Sequence[Mapping[str, Any]]) -> Table:
    t = Table(title=None, box=None, header_style="bold", pad_edge=False)
    for col in ("ID", "NAME", "STATE", "DESIRED", "TASKS", "AGE", "REASON"):
        t.add_column(col, overflow="fold", no_wrap=col != "REASON")
    now = time.time()
    for df in items:
        tasks = df.get("tasks") or []
        live = sum(1 for x in tasks if x.get("state") in ("running", "finished"))
        t.add_row(
            _str(df.get("id")),
            _str(df.get("name")),
            state(df.get("state")),
            _str(df.get("desired")),
            f"{live}/{len(tasks)}",
            age(df.get("created_at"), now),
            _str(df.get("reason")),
        )
    return t


def tasks_table(df: Mapping[str, Any], *, title: str | None = None) -> Table:
    t = Table(title=title, title_justify="left", header_style="bold", box=None, pad_edge=False)
    for col in ("TASK", "OPERATOR", "DEVICE", "STATE", "GEN", "IN", "OUT", "PLACEMENT"):
        t.add_column(
            col,
            overflow="fold",
            justify="right" if col in ("GEN", "IN", "OUT") else "left",
            no_wrap=col != "PLACEMENT",
        )
    for task in df.get("tasks") or []:
        why = task.get("placement_reason") or ""
        if task.get("reason"):
            why = f"{why} ({task['reason']})" if why else task["reason"]
        t.add_row(
            _str(task.get("id")),
            _str(task.get("operator")),
            _str(task.get("device")),
            state(task.get("state")),
            _str(task.get("generation")),
            _str(task.get("records_in")),
            _str(task.get("records_out")),
            why or "-",
        )
    return t


def dataflow_title(df: Mapping[str, Any]) -> Text:
    title = Text.assemble(
        ("dataflow ", "bold"),
        (f"{df.get('name', '?')} ", "bold"),
        (f"({df.get('id', '?')}) ", "dim"),
    )
    title.append_text(state(df.get("state")))
    if df.get("desired") and df.get("desired") != "running":
        title.append(f"  desired: {df['desired']}", style="dim")
    if df.get("reason"):
        title.append(f"  {df['reason']}", style="dim")
    return title


def edges_table(df: Mapping[str, Any]) -> Table:
    t = Table(header_style="bold", box=None, pad_edge=False)
    for col in ("FROM", "TO", "MODEL", "TRANSPORT", "TOPIC"):
        t.add_column(col, overflow="fold")
    for e in df.get("edges") or []:
        t.add_row(
            _str(e.get("from")),
            _str(e.get("to")),
            _str(e.get("model")),
            _str(e.get("transport")),
            _str(e.get("topic")),
        )
    return t


def grafana_trace_link(trace_id: str, grafana: str | None = None) -> str | None:
    """A Grafana Explore link to a trace (Tempo), when ``ECHO_GRAFANA_URL`` is set."""
    base = grafana if grafana is not None else os.environ.get("ECHO_GRAFANA_URL", "")
    if not base:
        return None
    pane = {
        "t": {
            "datasource": "echo-tempo",
            "queries": [
                {
                    "refId": "A",
                    "datasource": {"type": "tempo", "uid": "echo-tempo"},
                    "queryType": "traceql",
                    "query": trace_id,
                }
            ],
            "range": {"from": "now-24h", "to": "now"},
        }
    }
    panes = urllib.parse.quote(json.dumps(pane, separators=(",", ":")))
    return f"{base.rstrip('/')}/explore?schemaVersion=1&orgId=1&panes={panes}"


def trace_line(df: Mapping[str, Any]) -> Text | None:
    trace_id = df.get("trace_id")
    if not trace_id:
        return None
    line = Text.assemble(("trace ", "bold"), str(trace_id))
    link = grafana_trace_link(str(trace_id))
    if link:
        line.append(f"  {link}", style="dim")
    return line


def dataflow_detail(df: Mapping[str, Any]) -> RenderableType:
    parts: list[RenderableType] = [dataflow_title(df)]
    if (trace := trace_line(df)) is not None:
        parts.append(trace)
    parts += [Text(""), tasks_table(df)]
    if df.get("edges"):
        parts += [Text(""), edges_table(df)]
    return Group(*parts)


def when(ts: Any) -> str:
    try:
        return datetime.fromtimestamp(float(ts)).strftime("%Y-%m-%d %H:%M:%S")
    except (TypeError, ValueError):
        return "-"


def events_table(items: Sequence[Mapping[str, Any]], *, header: bool = True) -> Table:
    t = Table(header_style="bold", box=None, pad_edge=False, show_header=header)
    for col in ("TIME", "KIND", "SUBJECT", "MESSAGE", "TRACE"):
        t.add_column(col, overflow="fold", no_wrap=col in ("TIME", "KIND"))
    for e in items:
        t.add_row(
            when(e.get("time")),
            _str(e.get("kind")),
            _str(e.get("subject")),
            _str(e.get("message")),
            str(e.get("trace_id") or "-")[:16],
        )
    return t


def describe_dataflow(df: Mapping[str, Any], events: Sequence[Mapping[str, Any]]) -> RenderableType:
    """kubectl-describe style: the spec in short, placement and tasks, edges, recent events."""
    tasks = df.get("tasks") or []
    devices = sorted({str(t.get("device")) for t in tasks if t.get("device")})
    summary = Table(box=None, show_header=False, pad_edge=False)
    summary.add_column(style="bold")
    summary.add_column(overflow="fold")
    rows = [
        ("Name", _str(df.get("name"))),
        ("Id", _str(df.get("id"))),
        ("State", f"{df.get('state')} (desired: {df.get('desired')})"),
        ("Reason", _str(df.get("reason")) or "-"),
        ("Created", when(df.get("created_at"))),
        ("Updated", when(df.get("updated_at"))),
        ("Tasks", f"{len(tasks)} on {len(devices)} device(s): {', '.join(devices) or '-'}"),
        ("Edges", str(len(df.get("edges") or []))),
        ("Trace", _str(df.get("trace_id")) or "-"),
    ]
    link = grafana_trace_link(str(df["trace_id"])) if df.get("trace_id") else None
    if link:
        rows.append(("Grafana", link))
    for k, v in rows:
        summary.add_row(k, v)
    parts: list[RenderableType] = [
        summary,
        Text(""),
        Text("Placement and tasks", style="bold"),
        tasks_table(df),
    ]
    if df.get("edges"):
        parts += [Text(""), Text("Edges", style="bold"), edges_table(df)]
    parts += [Text(""), Text("Events", style="bold")]
    parts.append(events_table(events) if events else Text("no events", style="dim"))
    return Group(*parts)


def watch_view(df: Mapping[str, Any]) -> RenderableType:
    return Group(dataflow_title(df), tasks_table(df))


# ------------------------------------------------------------------------ devices


def _streams(d: Mapping[str, Any]) -> str:
    return ",".join(d.get("input_streams") or []) or "-"


def _labels(d: Mapping[str, Any]) -> str:
    labels = d.get("labels") or {}
    return ",".join(f"{k}={v}" for k, v in labels.items()) or "-"


def devices_table(items: Sequence[Mapping[str, Any]]) -> Table:
    t = Table(header_style="bold", box=None, pad_edge=False)
    for col in (
        "ID",
        "TIER",
        "STATUS",
        "CPUS",
        "MEM MiB",
        "CPU%",
        "MEM%",
        "TASKS",
        "STREAMS",
        "LABELS",
        "HEARTBEAT",
    ):
        t.add_column(col, overflow="fold", no_wrap=col in ("ID", "STATUS", "HEARTBEAT"))
    now = time.time()
    for d in items:
        cap = d.get("capacity") or {}
        t.add_row(
            _str(d.get("id")),
            _str(d.get("tier")),
            state(d.get("status")),
            _str(cap.get("cpu")),
            _str(cap.get("memory_mb")),
            _pct(d.get("cpu_percent")),
            _pct(d.get("memory_percent")),
            _str(d.get("tasks")),
            _streams(d),
            _labels(d),
            f"{age(d.get('last_heartbeat'), now)} ago" if d.get("last_heartbeat") else "-",
        )
    return t


def device_detail(d: Mapping[str, Any]) -> Table:
    t = Table(show_header=False, box=None, pad_edge=False)
    t.add_column(style="bold")
    t.add_column(overflow="fold")
    now = time.time()
    cap = d.get("capacity") or {}
    rows: list[tuple[str, str | Text]] = [
        ("id", _str(d.get("id"))),
        ("tier", _str(d.get("tier"))),
        ("status", Text.assemble(state(d.get("status")), f" for {age(d.get('status_since'), now)}")),
        ("capacity", f"{_str(cap.get('cpu'))} CPU, {_str(cap.get('memory_mb'))} MiB"),
        ("utilisation", f"CPU {_pct(d.get('cpu_percent'))}, memory {_pct(d.get('memory_percent'))}"),
        ("tasks", _str(d.get("tasks"))),
        ("input streams", _streams(d)),
        ("labels", _labels(d)),
        ("runtimes", ",".join(d.get("runtimes") or []) or "-"),
        ("arch", _str(d.get("arch"))),
        ("hostname", _str(d.get("hostname"))),
        ("agent version", _str(d.get("agent_version"))),
        ("reaches NATS", "yes" if d.get("reaches_nats") else "no"),
        ("last heartbeat", f"{age(d.get('last_heartbeat'), now)} ago" if d.get("last_heartbeat") else "-"),
        ("registered", f"{age(d.get('registered_at'), now)} ago" if d.get("registered_at") else "-"),
    ]
    for k, v in rows:
        t.add_row(k, v)
    return t


# ------------------------------------------------------------------------ tokens and audit


def token_created(body: Mapping[str, Any]) -> RenderableType:
    """A new token: the secret once, with the warning that it is not shown again."""
    expires = body.get("expires") or "never"
    return Group(
        Text.assemble(
            ("token ", "bold"),
            (_str(body.get("id")), "bold"),
            f" ({_str(body.get('role'))}), expires {expires}:",
        ),
        Text(_str(body.get("token"))),
        Text("it is not shown again: keep it now (e.g. export ECHO_TOKEN=...)", style="yellow"),
    )


def tokens_table(items: Sequence[Mapping[str, Any]]) -> Table:
    t = Table(header_style="bold", box=None, pad_edge=False)
    for col in ("ID", "ROLE", "NAME", "CREATED", "EXPIRES", "REVOKED"):
        t.add_column(col, overflow="fold", no_wrap=col != "NAME")
    for tok in items:
        t.add_row(
            _str(tok.get("id")),
            _str(tok.get("role")),
            _str(tok.get("name")),
            _str(tok.get("created")),
            _str(tok.get("expires")) if tok.get("expires") else "never",
            Text("revoked", style="bold red") if tok.get("revoked") else Text("-"),
        )
    return t


def _target(target: Any) -> str:
    if not isinstance(target, Mapping) or not target:
        return "-"
    return ",".join(f"{k}={v}" for k, v in target.items())


def audit_table(items: Sequence[Mapping[str, Any]]) -> Table:
    t = Table(header_style="bold", box=None, pad_edge=False)
    for col in ("TIME", "TOKEN", "ROLE", "ACTION", "TARGET", "RESULT", "CLIENT"):
        t.add_column(col, overflow="fold", no_wrap=col in ("TIME", "RESULT"))
    for e in items:
        result = e.get("result")
        ok = (isinstance(result, int) and result < 400) or result == "ok"
        t.add_row(
            _str(e.get("time")),
            _str(e.get("token")),
            _str(e.get("role")),
            _str(e.get("action")),
            _target(e.get("target")),
            Text(_str(result), style="" if ok else "red"),
            _str(e.get("client")),
        )
    return t
