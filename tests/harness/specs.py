"""Dataflow specs the end-to-end tests share."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def three_tiers(name: str, sink_path: Path, *, count: int, rate: float = 0) -> dict[str, Any]:
    """``io.generate`` on edge-1 -> ``core.passthrough`` on fog-1 -> ``io.file_sink`` on cloud-1."""
    return {
        "name": name,
        "tasks": [
            {
                "id": "gen",
                "operator": "io.generate",
                "config": {"count": count, "rate": rate},
                "placement": {"device": "edge-1"},
            },
            {"id": "pass", "operator": "core.passthrough", "placement": {"device": "fog-1"}},
            {
                "id": "sink",
                "operator": "io.file_sink",
                "config": {"path": str(sink_path)},
                "placement": {"device": "cloud-1"},
            },
        ],
        "edges": [{"from": "gen", "to": "pass"}, {"from": "pass", "to": "sink"}],
    }
