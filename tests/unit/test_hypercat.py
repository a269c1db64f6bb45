"""The HyperCat 3.0 catalogue of devices and dataflows (pure building and filtering)."""

from __future__ import annotations

from typing import Any

import pytest

from echo_master.hypercat import CONTENT_TYPE, build, matches, may_match
from echo_master.store import Dataflow
from echo_shared.models import (
    Capacity,
    DataflowSpec,
    DeviceRecord,
    DeviceStatus,
    TaskRecord,
    TaskState,
    Tier,
)

HC = "urn:X-hypercat:rels:"
ECHO = "urn:X-echo:rels:"


def device(
    dev_id: str, tier: Tier, streams: tuple[str, ...] = (), status: DeviceStatus = DeviceStatus.online
) -> DeviceRecord:
    return DeviceRecord(
        id=dev_id,
        tier=tier,
        capacity=Capacity(cpu=2, memory_mb=1024),
        input_streams=list(streams),
        runtimes=["python", "process"],
        labels={"site": "north"},
        status=status,
    )


def dataflow(df_id: str, state: str = "running", reason: str = "") -> Dataflow:
    spec = DataflowSpec.model_validate(
        {
            "name": "demo",
            "tasks": [
                {"id": "gen", "operator": "io.generate", "config": {"count": 1}},
                {"id": "sink", "operator": "io.file_sink", "config": {"path": "/tmp/x"}},
            ],
            "edges": [{"from": "gen", "to": "sink"}],
        }
    )
    raw = {
        "id": df_id,
        "name": "demo",
        "spec": spec.model_dump_json(by_alias=True),
        "desired": "running",
        "state": state,
        "reason": reason,
        "created_at": "1.0",
        "updated_at": "2.0",
    }
    tasks = {
        "gen": TaskRecord(id="gen", operator="io.generate", device="edge-1", state=TaskState.running),
        "sink": TaskRecord(id="sink", operator="io.file_sink"),
    }
    return Dataflow(raw, tasks)


DEVICES = [device("fog-1", Tier.fog), device("edge-1", Tier.edge, ("cam-7", "taxi-feed"))]
DATAFLOWS = [dataflow("df-000000000001"), dataflow("df-000000000002", "failed", "task 'gen': boom")]


def meta(item: dict[str, Any]) -> list[tuple[str, str]]:
    return [(m["rel"], m["val"]) for m in item["item-metadata"]]


def test_catalogue_metadata_declares_the_content_type_and_searches() -> None:
    cat = build(DEVICES, DATAFLOWS)
    pairs = [(m["rel"], m["val"]) for m in cat["catalogue-metadata"]]
    assert (HC + "isContentType", CONTENT_TYPE) in pairs
    assert CONTENT_TYPE == "application/vnd.hypercat.catalogue+json"
    assert any(rel == HC + "hasDescription:en" and val for rel, val in pairs)
    assert (HC + "supportsSearch", "urn:X-hypercat:search:simple") in pairs
    assert (HC + "supportsSearch", "urn:X-hypercat:search:prefix") in pairs


def test_items_are_devices_then_dataflows_with_their_metadata() -> None:
    cat = build(DEVICES, DATAFLOWS)
    assert [i["href"] for i in cat["items"]] == [
        "/api/v1/devices/edge-1",
        "/api/v1/devices/fog-1",
        "/api/v1/dataflows/df-000000000001",
        "/api/v1/dataflows/df-000000000002",
    ]
    edge = meta(cat["items"][0])
    assert edge[0][0] == HC + "hasDescription:en" and "edge-1" in edge[0][1]
    assert (HC + "isContentType", "application/json") in edge
    for pair in [
        (ECHO + "kind", "device"),
        (ECHO + "tier", "edge"),
        (ECHO + "status", "online"),
        (ECHO + "inputStream", "cam-7"),
        (ECHO + "inputStream", "taxi-feed"),
        (ECHO + "runtime", "process"),
        (ECHO + "cpu", "2"),
        (ECHO + "memoryMb", "1024"),
        (ECHO + "label:site", "north"),
    ]:
        assert pair in edge, pair
    failed = meta(cat["items"][3])
    for pair in [
        (ECHO + "kind", "dataflow"),
        (ECHO + "name", "demo"),
        (ECHO + "state", "failed"),
        (ECHO + "desired", "running"),
        (ECHO + "reason", "task 'gen': boom"),
        (ECHO + "task", "gen@edge-1"),
        (ECHO + "task", "sink@-"),
    ]:
        assert pair in failed, pair
    assert not any(rel == ECHO + "reason" for rel, _ in meta(cat["items"][2]))
    for item in cat["items"]:
        assert all(set(m) == {"rel", "val"} and isinstance(m["val"], str) for m in item["item-metadata"])


@pytest.mark.parametrize(
    ("query", "hrefs"),
    [
        ({"href": "/api/v1/devices/fog-1"}, ["/api/v1/devices/fog-1"]),
        ({"href": "/api/v1/devices/fog"}, []),
        ({"prefix": "/api/v1/devices/"}, ["/api/v1/devices/edge-1", "/api/v1/devices/fog-1"]),
        (
            {"prefix": "/api/v1/dataflows/df-0000000000"},
            ["/api/v1/dataflows/df-000000000001", "/api/v1/dataflows/df-000000000002"],
        ),
        ({"prefix": "/nothing"}, []),
        ({"rel": ECHO + "inputStream", "val": "cam-7"}, ["/api/v1/devices/edge-1"]),
        ({"rel": ECHO + "state", "val": "failed"}, ["/api/v1/dataflows/df-000000000002"]),
        ({"rel": ECHO + "tier"}, ["/api/v1/devices/edge-1", "/api/v1/devices/fog-1"]),
        ({"val": "fog"}, ["/api/v1/devices/fog-1"]),
        ({"prefix": "/api/v1/devices/", "rel": ECHO + "state"}, []),
    ],
)
def test_queries_filter_items(query: dict[str, str], hrefs: list[str]) -> None:
    cat = build(DEVICES, DATAFLOWS, **query)
    assert [i["href"] for i in cat["items"]] == hrefs
    assert cat["catalogue-metadata"] == build([], [])["catalogue-metadata"]


def test_matches_without_filters_is_everything() -> None:
    item = build(DEVICES, [])["items"][0]
    assert matches(item)


@pytest.mark.parametrize(
    ("base", "href", "prefix", "expected"),
    [
        ("/api/v1/devices/", None, None, True),
        ("/api/v1/devices/", "/api/v1/devices/x", None, True),
        ("/api/v1/devices/", "/api/v1/dataflows/x", None, False),
        ("/api/v1/devices/", None, "/api/", True),
        ("/api/v1/devices/", None, "/api/v1/devices/edge", True),
        ("/api/v1/devices/", None, "/api/v1/dataflows/", False),
    ],
)
def test_lookups_are_skipped_only_when_nothing_could_match(
    base: str, href: str | None, prefix: str | None, expected: bool
) -> None:
    assert may_match(base, href, prefix) is expected
