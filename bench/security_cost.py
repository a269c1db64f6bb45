"""What the brokers' TLS costs: deploy latency and one stream edge's records/s on the secured
stack (the one every other benchmark uses: TLS on every broker, logins, per-device ACLs,
grants pushed to Mosquitto before each deploy, NATS logins through the auth callout) next to
the same figures with the brokers listening in plaintext (``running_stack(tls=False)``, a
switch only this benchmark uses). Logins and ACLs stay on in both: no stack of ECHO accepts
an anonymous client, so their cost is part of both figures (an earlier version compared
against anonymous brokers). Target: TLS costs <= 15 % (deploy p50 at most 1.15 x; records/s
at least 0.85 x).
"""

from __future__ import annotations

from typing import Any

import deploy_latency
import stream_edge
from common import Stack, log, running_stack, summary_ms

TARGET = 0.15


def figures(stack: Stack, quick: bool) -> dict[str, Any]:
    runs = 5 if quick else 20
    deploys = summary_ms([r["client"] for r in deploy_latency.series(stack, "deploy", runs, None, [])])
    count = 50_000 if quick else 100_000
    streams = [stream_edge.measured_stream(stack, count) for _ in range(1 if quick else 3)]
    rates = sorted(s["records_per_s"] for s in streams)
    return {
        "deploy_p50_ms": deploys["p50"],
        "deploy_p95_ms": deploys["p95"],
        "stream_records_per_s": rates[len(rates) // 2],  # the median run (the machine is shared)
        "stream_runs_records_per_s": rates,
        "stream_clean": all(
            s["sink_file_check"]["duplicates"] == 0 and s["sink_file_check"]["missing"] == 0 for s in streams
        ),
    }


def measure(tls: bool, quick: bool) -> dict[str, Any]:
    what = "secured" if tls else "plaintext brokers (logins and ACLs kept)"
    log(f"security cost: a {what} stack")
    with running_stack(tls=tls) as stack:
        deploy_latency.series(stack, "warmup", 1, None, [])
        out = figures(stack, quick)
    log(f"security cost: {what}: {out}")
    return out


def run(_stack: Stack | None, quick: bool) -> dict[str, Any]:
    """Two stacks of its own, one after the other (never both at once: 2 cores)."""
    secure = measure(True, quick)
    plain = measure(False, quick)
    deploy_cost = secure["deploy_p50_ms"] / plain["deploy_p50_ms"] - 1 if plain["deploy_p50_ms"] else None
    rate_cost = (
        1 - secure["stream_records_per_s"] / plain["stream_records_per_s"]
        if plain["stream_records_per_s"]
        else None
    )
    met = (
        deploy_cost is not None
        and rate_cost is not None
        and deploy_cost <= TARGET
        and rate_cost <= TARGET
        and secure["stream_clean"]
        and plain["stream_clean"]
    )
    return {
        "secure": secure,
        "plaintext": plain,
        "deploy_p50_cost": round(deploy_cost, 3) if deploy_cost is not None else None,
        "stream_rate_cost": round(rate_cost, 3) if rate_cost is not None else None,
        "target": f"cost <= {TARGET:.0%} on both",
        "met": met,
    }
