"""The migration benchmark's dataflow and the platform of its own it runs on.

The counting dataflow (``io.generate`` -> ``stats.count_by_key`` -> ``io.file_sink``, see
``migration.py``), a task of it as the API shows it, the check of its sink file read whole
(records lost, duplicated, wrongly counted), and the benchmark's own platform (``FLEET``,
``PLATFORM_ENV``) with the registry's ``lost_after`` in force on it. Both runs
(``migration_moves``, ``migration_failover``) use these.
"""

from __future__ import annotations

import os
import time
import uuid
from pathlib import Path
from typing import Any

import orjson

from common import Api, Stack, log
from echo_cli.devstack.platform import AgentSpec, Platform
from echo_shared.settings import LivenessSettings

RATE = 1000.0
FLEET = (
    AgentSpec("cloud-1", "cloud", cpu=4.0, memory_mb=4096),
    AgentSpec("fog-1", "fog", cpu=2.0, memory_mb=2048),
    AgentSpec("fog-2", "fog", cpu=2.0, memory_mb=2048),
    AgentSpec("fog-3", "fog", cpu=2.0, memory_mb=2048),
)
FOGS = ("fog-1", "fog-2", "fog-3")
PLATFORM_ENV = {"ECHO_REBALANCE_ENABLED": "false"}
FINISHED = {"completed", "failed", "rolled_back"}
POLL_S = 0.02


# ------------------------------------------------------------------ the dataflow


def counting_spec(out: Path, count: int) -> dict[str, Any]:
    return {
        "name": f"migration-bench-{uuid.uuid4().hex[:6]}",
        "tasks": [
            {
                "id": "gen",
                "operator": "io.generate",
                "config": {"count": count, "rate": RATE, "fields": {"city": "nyc"}},
                "placement": {"device": "cloud-1"},
            },
            {
                "id": "count",
                "operator": "stats.count_by_key",
                "config": {"key": "city"},
                "placement": {"tier": "fog"},
            },
            {
                "id": "sink",
                "operator": "io.file_sink",
                "config": {"path": str(out)},
                "placement": {"device": "cloud-1"},
            },
        ],
        "edges": [{"from": "gen", "to": "count"}, {"from": "count", "to": "sink"}],
    }


def task_of(api: Api, df_id: str, task_id: str) -> dict[str, Any]:
    return next(t for t in api.dataflow(df_id)["tasks"] if t["id"] == task_id)


def check_sink(path: Path, count: int) -> dict[str, Any]:
    """Lost, duplicated and wrongly counted records in the sink file (read whole)."""
    lines = [orjson.loads(ln) for ln in path.read_bytes().splitlines() if ln.strip()] if path.exists() else []
    seqs = [r.get("seq") for r in lines]
    unique = set(seqs)
    missing = sorted(set(range(count)) - unique)
    wrong = [r for r in lines if r.get("count") != (r.get("seq") or 0) + 1 or r.get("key") != "nyc"]
    return {
        "expected": count,
        "records": len(lines),
        "lost": len(missing),
        "duplicated": len(seqs) - len(unique),
        "unexpected": len(unique - set(range(count))),
        "first_lost": missing[:10],
        "count_equals_seq_plus_1": not wrong and bool(lines),
        "wrong_counts": len(wrong),
        "first_wrong": wrong[:5],
    }


# ------------------------------------------------------------------ the platform


def lost_after_in_force(platform: Platform) -> float:
    env = {**os.environ, **platform.env()}
    raw = env.get("ECHO_LOST_AFTER")
    return float(raw) if raw else float(LivenessSettings.model_fields["lost_after"].default)


def own_stack(stack: Stack) -> Stack:
    workdir = stack.workdir / "migration"
    platform = Platform(
        stack.brokers, workdir / "platform", namespace="m" + uuid.uuid4().hex[:8], extra_env=PLATFORM_ENV
    )
    t0 = time.monotonic()
    try:
        platform.start(FLEET, timeout=90)
    except Exception:
        platform.stop()
        raise
    log(f"migration: own platform up in {time.monotonic() - t0:.1f}s, API {platform.api_url}")
    return Stack(
        stack.brokers,
        platform,
        Api(platform.api_url, platform.admin_token, platform.api_verify),
        workdir,
        FLEET,
    )
