"""Dataflow specs the end-to-end tests share."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson


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


def riotbench_spelling(body: bytes, azure_uuid: str) -> bytes:
    """An original ECHO ETL DAG as RIoTBench's NiFi DAGs spell it: ETLGetFile as the source,
    the other package spelling of the processors, and InsertAzure (uuid ``azure_uuid``)
    after the annotation (processor "4")."""
    dag = orjson.loads(body)
    for p in dag["processors"]:
        simple = p["class"].rsplit(".", 1)[-1]
        if simple == "GetFile":
            p["class"] = "in.dream_lab.nifi.etl.processors.ETLGetFile"
        elif p["class"].startswith("in.dream_lab."):
            p["class"] = "in.dreamlab.processors." + simple
    dag["processors"].append(
        {
            "name": "InsertAzure",
            "class": "in.dreamlab.processors.InsertAzure",
            "uuid": azure_uuid,
            "relationships": [{"name": "success", "autoTerminate": True}],
            "properties": [
                {"Azure storage Connection String": "DefaultEndpointsProtocol=https"},
                {"Azure Table Name": "taxi"},
            ],
        }
    )
    dag["wiring"].append(
        {"sourceProcessor": "4", "destinationProcessor": azure_uuid, "selectedRelationships": ["success"]}
    )
    return orjson.dumps(dag)
