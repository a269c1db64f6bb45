"""``echoctl plan SPEC --devices DEVICES.yaml [--strategy S] [-o table|json]``: where the
scheduler would put a dataflow's tasks, and why, without brokers or a platform.

The scheduler's own code decides: it runs as ``python -m echo_scheduler plan`` with this
interpreter (the CLI never imports the scheduler), and its JSON is printed as is
(``-o json``) or as tables. Its exit code is kept: 1 when the spec cannot be placed,
2 for bad input (a missing file, an invalid spec or device record), with its one-line
message.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Mapping
from enum import StrEnum
from typing import Any

from rich.console import Group, RenderableType
from rich.table import Table
from rich.text import Text

from .client import CliError

PLAN_TIMEOUT = 300.0


class Strategy(StrEnum):
    round_robin = "round-robin"
    greedy = "greedy"
    optimal = "optimal"


class PlanFailed(CliError):
    """The scheduler refused: ``code`` is its exit code (1 cannot be placed, 2 bad input)."""

    def __init__(self, message: str, code: int) -> None:
        super().__init__(message)
        self.code = code


def run_plan(spec: str, devices: str, strategy: Strategy | None = None) -> str:
    """The placement JSON from the scheduler, or ``PlanFailed`` with its message and code."""
    cmd = [sys.executable, "-m", "echo_scheduler", "plan", spec, "--devices", devices]
    if strategy is not None:
        cmd += ["--strategy", strategy.value]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=PLAN_TIMEOUT, check=False)
    except subprocess.TimeoutExpired:
        raise PlanFailed(f"the scheduler did not answer within {PLAN_TIMEOUT:g} s", 1) from None
    if proc.returncode != 0:
        lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
        msg = lines[-1] if lines else f"the scheduler exited with code {proc.returncode}"
        raise PlanFailed(msg.removeprefix("error: "), proc.returncode)
    return proc.stdout


def _num(v: Any, unit: str = "") -> str:
    return f"{v:.2f}{unit}" if isinstance(v, int | float) else "-"


def plan_view(placement: Mapping[str, Any]) -> RenderableType:
    cost = placement.get("cost") or {}
    title = Text.assemble(
        ("placement ", "bold"),
        (f"strategy {placement.get('strategy', '?')}", ""),
        (
            f"  cost {_num(cost.get('total'))} = latency {_num(cost.get('latency_ms'), ' ms')}"
            f" + transfer {_num(cost.get('transfer'))} + load {_num(cost.get('load'))}",
            "dim",
        ),
    )
    tasks = Table(header_style="bold", box=None, pad_edge=False)
    for col in ("TASK", "DEVICE", "FINISH", "REASON", "RUNNER-UP"):
        tasks.add_column(col, overflow="fold", no_wrap=col in ("TASK", "DEVICE", "FINISH"))
    for t in placement.get("tasks") or []:
        costs = t.get("costs") or {}
        runner = t.get("runner_up")
        why = t.get("runner_up_reason") or ""
        tasks.add_row(
            str(t.get("task", "-")),
            str(t.get("device", "-")),
            _num(costs.get("finish_ms"), " ms"),
            str(t.get("reason") or "-"),
            f"{runner}: {why}" if runner else why or "-",
        )
    channels = Table(header_style="bold", box=None, pad_edge=False)
    for col in ("FROM", "TO", "TRANSPORT", "TOPIC", "REASON"):
        channels.add_column(col, overflow="fold", no_wrap=col in ("FROM", "TO", "TRANSPORT"))
    for c in placement.get("channels") or []:
        channels.add_row(
            str(c.get("from_task", "-")),
            str(c.get("to_task", "-")),
            str(c.get("transport", "-")),
            str(c.get("topic", "-")),
            str(c.get("reason") or "-"),
        )
    parts: list[RenderableType] = [title, Text(""), tasks, Text(""), channels]
    relays = placement.get("relays") or []
    if relays:
        table = Table(header_style="bold", box=None, pad_edge=False)
        for col in ("RELAY", "DEVICE", "EDGE", "REASON"):
            table.add_column(col, overflow="fold", no_wrap=col != "REASON")
        for r in relays:
            table.add_row(
                str(r.get("id", "-")),
                str(r.get("device", "-")),
                f"{r.get('from_task', '?')}→{r.get('to_task', '?')}",
                str(r.get("reason") or "-"),
            )
        parts += [Text(""), table]
    return Group(*parts)


def parse(text: str) -> dict[str, Any]:
    try:
        body = json.loads(text)
    except json.JSONDecodeError as e:
        raise CliError(f"the scheduler printed something that is not JSON: {e}") from None
    if not isinstance(body, dict):
        raise CliError("the scheduler printed something that is not a placement")
    return body
