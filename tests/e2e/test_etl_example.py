"""The RIoTBench ETL example (examples/etl/dataflow.yaml) on a three-tier platform.

The expected result is computed here, plainly, from the same data files (json, the
ranges, the id list, a running mean, the metadata lines) — not with the operators — and
compared with every task's counters, the sink file and the SenML published on MQTT.
"""

from __future__ import annotations

import asyncio
import json
import threading
import uuid
from collections import deque
from pathlib import Path
from typing import Any

import pytest
import yaml

from echo_cli.devstack import Brokers
from echo_shared.mqtt import MqttMessage
from tests.conftest import PlatformFactory
from tests.harness.waiting import wait_until

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "examples" / "etl"
DATA = EXAMPLE / "data"

RANGES = {
    "trip_time_in_secs": (140.0, 3155.0),
    "trip_distance": (1.37, 29.86),
    "fare_amount": (6.0, 201.0),
    "tip_amount": (0.65, 38.55),
    "tolls_amount": (2.5, 18.0),
    "surcharge": (0.1, 1.0),
}
WINDOW = 5


# ------------------------------------------------------------------ the plain computation


def expected() -> tuple[int, int, dict[int, dict[str, Any]]]:
    """(lines, observations per line, {seq: the fields of its published SenML, and "bt"})."""
    trained = {
        s.strip()
        for s in (DATA / "trained-taxi-ids.txt").read_text().splitlines()
        if s.strip() and not s.startswith("#")
    }
    meta = {}
    for line in (DATA / "taxi-metadata.txt").read_text().splitlines():
        taxi, values = line.split(":", 1)
        company, driver, city = values.split(",")
        meta[taxi] = {"taxi_company": company, "drivername": driver, "taxi_city": city}
    recent: dict[str, deque[float]] = {f: deque(maxlen=WINDOW) for f in RANGES}
    lines = (DATA / "TAXI_sample_data_senml.csv").read_text().splitlines()
    out: dict[int, dict[str, Any]] = {}
    per_line = set()
    for seq, line in enumerate(lines):
        doc = json.loads(line.split(",", 1)[1])
        per_line.add(len(doc["e"]))
        fields = {e["n"]: float(e["v"]) if "v" in e else e["sv"] for e in doc["e"]}
        if fields["taxi_identifier"] not in trained:
            continue
        for name, (lo, hi) in RANGES.items():
            value = fields[name]
            if lo <= value <= hi:
                recent[name].append(value)
            elif recent[name]:
                fields[name] = sum(recent[name]) / len(recent[name])
            else:
                del fields[name]  # missing, never filled: not in the SenML
        fields.update(meta[fields["taxi_identifier"]])
        fields["bt"] = doc["bt"]
        out[seq] = fields
    (observations,) = per_line
    return len(lines), observations, out


def published_fields(senml: str) -> dict[str, Any]:
    doc = json.loads(senml)
    fields: dict[str, Any] = {e["n"]: e["v"] if "v" in e else e["sv"] for e in doc["e"]}
    fields["bt"] = doc["bt"]
    return fields


# --------------------------------------------------------------------------- helpers


class Subscriber:
    """Collects the payloads published on a topic, on a thread with its own event loop."""

    def __init__(self, brokers: Brokers, topic: str) -> None:
        self.brokers, self.topic = brokers, topic
        self.payloads: list[bytes] = []
        self.ready = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._thread = threading.Thread(target=lambda: asyncio.run(self._main()), daemon=True)

    async def _main(self) -> None:
        self._loop, self._stop = asyncio.get_running_loop(), asyncio.Event()

        def got(msg: MqttMessage) -> None:
            self.payloads.append(msg.payload)

        client = self.brokers.mqtt_client(f"etl-test-{uuid.uuid4().hex[:8]}", on_message=got)
        await client.start()
        try:
            await client.subscribe(self.topic, qos=1)
            self.ready.set()
            await self._stop.wait()
        finally:
            await client.close()

    def __enter__(self) -> Subscriber:
        self._thread.start()
        assert self.ready.wait(15), f"could not subscribe to {self.topic}"
        return self

    def __exit__(self, *exc: object) -> None:
        if self._loop is not None and self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(10)


def example_spec(out: Path, topic: str) -> dict[str, Any]:
    """The example as shipped, with its data paths made absolute and the outputs the test's."""
    spec: dict[str, Any] = yaml.safe_load((EXAMPLE / "dataflow.yaml").read_text())
    for task in spec["tasks"]:
        cfg = task["config"]
        for key in ("path", "ids_file", "schema_file", "metadata_file"):
            if isinstance(cfg.get(key), str) and cfg[key].startswith("examples/"):
                cfg[key] = str(REPO / cfg[key])
    tasks = {t["id"]: t for t in spec["tasks"]}
    tasks["sink"]["config"]["path"] = str(out)
    tasks["publish"]["config"]["topic"] = topic
    return spec


def read_sink(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    data = path.read_bytes()
    complete = data[: data.rfind(b"\n") + 1]
    return [json.loads(line) for line in complete.splitlines() if line.strip()]


# ------------------------------------------------------------------------------ test


@pytest.mark.timeout(180)
def test_etl_example_counts_every_stage_and_publishes_the_senml(
    platform_factory: PlatformFactory, tmp_path: Path
) -> None:
    lines, observations, want = expected()
    kept = len(want)
    assert 0 < kept < lines, "the trained ids must filter some but not all taxis"
    assert observations == 16

    platform, api = platform_factory()
    out = tmp_path / "etl-out.jsonl"
    topic = f"etl-test-{uuid.uuid4().hex[:10]}/taxi"
    spec = example_spec(out, topic)
    with Subscriber(platform.brokers, topic) as sub:
        df_id = api.submit(spec)
        df = api.wait_state(df_id, "completed", timeout=150)
        wait_until(lambda: len(sub.payloads) >= kept, timeout=10, what=f"{kept} SenML messages on {topic}")

    tasks = {t["id"]: t for t in df["tasks"]}
    devices = {k: t["device"] for k, t in tasks.items()}
    assert devices == {
        **dict.fromkeys(["source", "parse", "range", "bloom"], "edge-1"),
        **dict.fromkeys(["interpolate", "join", "annotate", "senml", "publish"], "fog-1"),
        "sink": "cloud-1",
    }
    edges = {(e["from"], e["to"]): e["model"] for e in df["edges"]}
    assert edges[("senml", "sink")] == "batch" and edges[("parse", "range")] == "stream"

    # one record per trip, or one per observation when the example splits the messages
    split = next(t for t in spec["tasks"] if t["id"] == "parse")["config"].get("split", False)
    per_trip = observations if split else 1
    parts, kept_parts = lines * per_trip, kept * per_trip
    counts = {k: (t["records_in"], t["records_out"]) for k, t in tasks.items()}
    assert counts == {
        "source": (0, lines),
        "parse": (lines, parts),
        "range": (parts, parts),
        "bloom": (parts, kept_parts),
        "interpolate": (kept_parts, kept_parts),
        "join": (kept_parts, kept),
        "annotate": (kept, kept),
        "senml": (kept, kept),  # each record goes to both publish and sink
        "publish": (kept, 0),
        "sink": (kept, 0),
    }

    records = read_sink(out)
    assert sorted(r["seq"] for r in records) == sorted(want), "each kept trip exactly once"
    assert all(list(r) == ["seq", "senml"] for r in records)
    got = {r["seq"]: published_fields(r["senml"]) for r in records}
    for seq, fields in want.items():
        assert got[seq].keys() == fields.keys(), seq
        for name, value in fields.items():
            assert got[seq][name] == (pytest.approx(value) if isinstance(value, float) else value), (
                seq,
                name,
            )

    published = sorted((json.loads(p) for p in sub.payloads), key=lambda d: (d["bt"], json.dumps(d)))
    in_sink = sorted((json.loads(r["senml"]) for r in records), key=lambda d: (d["bt"], json.dumps(d)))
    assert published == in_sink, "the SenML on MQTT is what the sink stored"


@pytest.mark.timeout(90)
def test_etl_example_with_a_missing_metadata_file_fails_naming_it(
    platform_factory: PlatformFactory, tmp_path: Path
) -> None:
    _platform, api = platform_factory()
    spec = example_spec(tmp_path / "out.jsonl", f"etl-test-{uuid.uuid4().hex[:10]}/taxi")
    missing = tmp_path / "no-such-metadata.txt"
    next(t for t in spec["tasks"] if t["id"] == "annotate")["config"]["metadata_file"] = str(missing)
    df_id = api.submit(spec)
    df = wait_until(
        lambda: (d := api.dataflow(df_id))["state"] == "failed" and d, timeout=60, what="the dataflow to fail"
    )
    assert f"metadata_file '{missing}' does not exist on device fog-1" in df["reason"], df["reason"]
    annotate = next(t for t in df["tasks"] if t["id"] == "annotate")
    assert annotate["state"] == "failed"
