"""Live migration and failover of a stateful task while data flows (issue 5's benchmark).

The dataflow is the one of ``tests/e2e/test_migration.py``: ``io.generate`` (``RATE`` =
1,000 records/s, ``fields: {city: nyc}``) pinned to cloud-1 -> ``stats.count_by_key``
(``key: city``, on a fog device) -> ``io.file_sink`` pinned to cloud-1. It runs on a small
platform of its own (``FLEET``: cloud-1 and fog-1..3, the four services) on the bench's
brokers, in a namespace of its own, so the agent killed in part 2 leaves the bench's
platform alone.

1. **Migration downtime.** ``MIGRATIONS`` (``--quick``: 20) migrations of ``count``, one at
   a time, round-robin over the three fog devices with an explicit target (``POST
   .../tasks/count/migrate {"device"}``), each followed to its end by polling ``GET
   /api/v1/migrations/{id}`` every 20 ms. The sink file is tailed every 5 ms on a thread
   (``etl_pipeline.SinkTail``: wall-clock arrival time per seq). Downtime of one migration =
   the largest gap between consecutive sink arrivals from the last arrival before the POST
   to the first arrival after the migration was seen ``completed`` (nothing subtracted: it
   includes the 5 ms tail period and the sink's own batching; ``baseline_gap_ms`` is the
   same figure over the second before the first migration, i.e. the noise floor with no
   migration). Before each migration the benchmark waits (polling, 30 s deadline) until the
   sink is within 0.5 s of the source's schedule, so each one starts from a steady flow and
   a stall is not shared by the migrations behind it. Second view, from the records:
   ``io.generate`` emits seq i at start + i/R, so a record's lag = arrival - (start + i/R)
   (start = the earliest arrival - seq/R); ``added_latency_ms`` of a migration = the peak lag
   of the records scheduled between its POST and its completion minus the median lag of the
   second before the first migration. Also the saga's own step timings (``drain``,
   ``resume``, ``place``) and POST -> ``completed`` as the client saw it. Next to it, the
   raw broker: publish -> receive of one QoS 1 MQTT message at a time on the same broker
   (paho, MQTT 5, no ECHO code), and the same for core NATS when an edge uses NATS.
2. **Failover.** A second run of the same dataflow; once ``count`` has taken 3,000 records
   (a few periodic checkpoints), its agent is killed with -9. Polling the API every 20 ms:
   kill -> the device ``lost``, -> the failover migration (``origin: failover``) created,
   -> ``count`` running on another device (the failover time), -> the migration
   ``completed``; the largest sink gap after the kill and the first sink record after the
   task runs elsewhere (when data flows again, which "running" in the API does not prove).
   Target: failover time <= the registry's ``lost_after`` in force + 1 s.

After each run completes: the sink file read whole -- records lost (seqs missing of
0..count-1) and duplicated (must be 0 / 0), and whether the count on every line equals
seq + 1 (the operator's state carried across every move). Both runs also carry every sink
stall over 1 s and the sink's records per second, so one long stall shared by many
migrations shows as what it is.

Settings: service defaults, except ``ECHO_REBALANCE_ENABLED=false`` on this benchmark's
platform, so that only the benchmark's migrations move the task (an overload move of the
adaptive rebalancer would be one it does not time).
"""

from __future__ import annotations

from typing import Any

from common import Stack, log
from migration_failover import failover_run
from migration_flow import FLEET, PLATFORM_ENV, lost_after_in_force, own_stack
from migration_measures import mqtt_latency, nats_latency
from migration_moves import migrations_run
from raw_brokers import Auth

MIGRATIONS_FULL, MIGRATIONS_QUICK = 100, 20
RTT_SAMPLES = 200
TARGET_P50_MS, TARGET_P99_MS = 250.0, 1000.0
FAILOVER_SLACK_S = 1.0


# ------------------------------------------------------------------ entry point


def run(stack: Stack, quick: bool) -> dict[str, Any]:
    n = MIGRATIONS_QUICK if quick else MIGRATIONS_FULL
    own = own_stack(stack)
    try:
        lost_after = lost_after_in_force(own.platform)
        mqtt_auth = Auth.of(stack.brokers, "mqtt")
        raw: dict[str, Any] = {"mqtt": mqtt_latency(stack.brokers.mqtt_url, RTT_SAMPLES, mqtt_auth)}
        log(f"migration: raw MQTT QoS 1 publish -> receive {raw['mqtt']}")
        mig = migrations_run(own, n)
        if "nats" in mig["edges_transport"].values():
            raw["nats"] = nats_latency(stack.brokers.nats_url, RTT_SAMPLES, Auth.of(stack.brokers, "nats"))
        log(
            f"migration: downtime {mig['downtime_ms']}, saga {mig['saga_steps_ms']}, sink {mig['sink']}, "
            f"not completed {len(mig['migrations_not_completed'])}"
        )
        fo = failover_run(own, lost_after)
        log(f"failover: {fo['failover_s']} s ({fo['seconds_after_kill']}), sink {fo['sink']}")
    finally:
        own.api.close()
        codes = own.platform.stop()
        bad = {k: v for k, v in codes.items() if v not in (0, None)}
        if bad:
            log(f"migration platform: exit codes {bad} (the killed agent's -9 expected)")
    d = mig["downtime_ms"]
    ms, fs = mig["sink"], fo["sink"]
    failover_target_s = lost_after + FAILOVER_SLACK_S
    met = bool(
        mig["migrations_completed"] == n
        and not mig["error"]
        and d.get("n")
        and d["p50"] <= TARGET_P50_MS
        and d["p99"] <= TARGET_P99_MS
        and ms["lost"] == 0
        and ms["duplicated"] == 0
        and ms["count_equals_seq_plus_1"]
        and not fo["error"]
        and fo["failover_s"] is not None
        and fo["failover_s"] <= failover_target_s
        and fs["lost"] == 0
        and fs["duplicated"] == 0
        and fs["count_equals_seq_plus_1"]
    )
    return {
        "downtime_ms": {k: d.get(k) for k in ("n", "p50", "p99", "max")},
        "baseline_sink_gap_ms": mig["baseline_gap_ms"],
        "added_latency_ms": {k: mig["added_latency_ms"].get(k) for k in ("p50", "p99", "max")},
        "raw_publish_to_receive_ms": {
            k: {q: v.get(q) for q in ("p50", "p99", "max")} for k, v in raw.items()
        },
        "saga_drain_ms": {k: mig["saga_steps_ms"]["drain"].get(k) for k in ("p50", "p99")},
        "saga_resume_ms": {k: mig["saga_steps_ms"]["resume"].get(k) for k in ("p50", "p99")},
        "migrations": f"{mig['migrations_completed']}/{n} completed",
        "records_lost": ms["lost"],
        "records_duplicated": ms["duplicated"],
        "state_carried": ms["count_equals_seq_plus_1"],
        "failover_s": fo["failover_s"],
        "lost_after_s": lost_after,
        "failover_first_sink_record_after_kill_s": fo["first_sink_record_after_failover_s"],
        "failover_records_lost": fs["lost"],
        "failover_records_duplicated": fs["duplicated"],
        "failover_state_carried": fs["count_equals_seq_plus_1"],
        "target": {
            "downtime_p50_ms_max": TARGET_P50_MS,
            "downtime_p99_ms_max": TARGET_P99_MS,
            "records_lost_duplicated": [0, 0],
            "failover_s_max": failover_target_s,
        },
        "met": met,
        "settings": {
            "changed": PLATFORM_ENV,
            "why": "only the benchmark's migrations move the task (it does not time an overload move)",
            "platform": "own namespace on the bench's brokers: "
            + ", ".join(f"{a.device_id} ({a.tier})" for a in FLEET),
        },
        "method": __doc__.split("\n\n", 1)[1].strip() if __doc__ else "",
        "raw_brokers": raw,
        "migration_run": mig,
        "failover_run": fo,
    }


__all__ = ["run"]
