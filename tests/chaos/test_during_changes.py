"""Each broker and each service killed (-9) in the middle of a change, and started again:
right after a dataflow is accepted (its deployment under way) and right after a migration
is accepted (its saga under way). The change still happens (the dataflow runs; the
migration ends, completed or rolled back, never stuck), nothing is lost or duplicated at
the sink, counts intact, no device falsely declared lost, every process alive."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.chaos.conftest import Stack
from tests.chaos.test_broker_outages import converged, flow, outage, steady
from tests.e2e.test_migration import migrate, read_jsonl, task, wait_migration
from tests.harness.waiting import wait_until

pytestmark = pytest.mark.e2e

BROKERS = ("nats", "mosquitto", "redis")
SERVICES = ("master", "scheduler", "registry", "migrator")
# what `make test` runs of them; `make chaos` runs every victim in both phases
FAST = {("deployment", "redis"), ("deployment", "master"), ("migration", "nats"), ("migration", "migrator")}


def victims(phase: str) -> list[object]:
    return [
        pytest.param(v, id=v, marks=() if (phase, v) in FAST else pytest.mark.slow)
        for v in (*BROKERS, *SERVICES)
    ]


def kill(s: Stack, victim: str) -> None:
    if victim in BROKERS:
        s.brokers.kill(victim)
    else:
        s.platform.services[victim].kill()


def revive(s: Stack, victim: str) -> None:
    if victim in BROKERS:
        s.brokers.restart(victim)
        return
    s.platform.services[victim] = s.platform.start_service(victim)
    if victim == "master":
        s.platform.wait_api()


@pytest.mark.parametrize("victim", victims("deployment"))
def test_killed_during_a_deployment(stack: Stack, tmp_path: Path, victim: str) -> None:
    s, out, total = stack, tmp_path / "out.jsonl", 5_000
    before = s.api.devices()
    df_id = s.api.submit(flow(out, total))  # accepted: from here on it must happen
    kill(s, victim)
    outage(2.0)  # past the unreachable threshold (1 s)
    revive(s, victim)
    s.api.wait_state(df_id, "running", "completed", timeout=90)
    converged(s, df_id, out, total, before)


@pytest.mark.timeout(240)  # a master killed with the drain in hand: its answer is waited for 30 s
@pytest.mark.parametrize("victim", victims("migration"))
def test_killed_during_a_migration(stack: Stack, tmp_path: Path, victim: str) -> None:
    s, out, total = stack, tmp_path / "out.jsonl", 8_000
    df_id = steady(s, out, total)
    before = s.api.devices()
    here = task(s.api, df_id, "count")["device"]
    target = "fog-2" if here == "fog-1" else "fog-1"
    mid = migrate(s.api, df_id, "count", target)  # accepted: its saga is under way
    kill(s, victim)
    outage(2.0)
    revive(s, victim)
    m = wait_migration(s.api, mid, timeout=120)
    assert m["state"] in ("completed", "rolled_back"), m
    where = task(s.api, df_id, "count")["device"]
    assert where == (target if m["state"] == "completed" else here), (m, where)
    seen = len(read_jsonl(out))
    wait_until(lambda: len(read_jsonl(out)) > seen or seen >= total, timeout=30, what="records flowing again")
    converged(s, df_id, out, total, before)
