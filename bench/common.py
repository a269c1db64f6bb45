"""What every benchmark shares: the stack (brokers + platform in a temp dir), a REST client,
statistics, progress output on stderr, and a scan of the platform's logs for trouble.

Benchmarks print figures; they assert nothing. Progress goes to stderr so that stdout
carries exactly one JSON document.
"""

from __future__ import annotations

import contextlib
import re
import shutil
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import orjson

from echo_cli.devstack import Brokers, start_brokers
from echo_cli.devstack.platform import AgentSpec, Platform
from echo_cli.testbed.network import TESTBED_HOST

FLEET = (
    AgentSpec("edge-1", "edge", input_streams=("taxi-feed",), cpu=1.0, memory_mb=512),
    AgentSpec("edge-2", "edge", cpu=1.0, memory_mb=512),
    AgentSpec("fog-1", "fog", cpu=2.0, memory_mb=2048),
    AgentSpec("cloud-1", "cloud", cpu=4.0, memory_mb=8192),
)

_T0 = time.monotonic()


def log(msg: str) -> None:
    print(f"[bench {time.monotonic() - _T0:7.2f}s] {msg}", file=sys.stderr, flush=True)


# ------------------------------------------------------------------------ statistics


def percentile(values: list[float], q: float) -> float:
    """Linear-interpolated percentile (``q`` in 0..100) of a non-empty list."""
    s = sorted(values)
    if len(s) == 1:
        return s[0]
    pos = (len(s) - 1) * q / 100.0
    lo = int(pos)
    hi = min(lo + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (pos - lo)


def summary_ms(values_s: list[float]) -> dict[str, float | int]:
    """p50/p95/max/min/mean of durations given in seconds, in milliseconds."""
    if not values_s:
        return {"n": 0}
    ms = [v * 1000.0 for v in values_s]
    return {
        "n": len(ms),
        "p50": round(percentile(ms, 50), 1),
        "p95": round(percentile(ms, 95), 1),
        "max": round(max(ms), 1),
        "min": round(min(ms), 1),
        "mean": round(sum(ms) / len(ms), 1),
    }


# ------------------------------------------------------------------------ REST client


class BenchApiError(RuntimeError):
    pass


class Api:
    """A thin synchronous client of the master's REST API (one keep-alive connection), with
    the platform's admin token (every route needs one)."""

    def __init__(self, base_url: str, token: str | None = None, verify: Any = True) -> None:
        headers = {"Authorization": f"Bearer {token}"} if token else None
        self.http = httpx.Client(base_url=base_url, timeout=15, headers=headers, verify=verify)

    def close(self) -> None:
        self.http.close()

    def submit(self, spec: dict[str, Any]) -> str:
        r = self.http.post("/api/v1/dataflows", json=spec)
        if r.status_code != 201:
            raise BenchApiError(f"POST /api/v1/dataflows -> {r.status_code}: {r.text[:500]}")
        return str(r.json()["id"])

    def dataflow(self, df_id: str, wait: str | None = None) -> dict[str, Any]:
        params = {"wait": wait, "timeout": "30"} if wait else None
        r = self.http.get(f"/api/v1/dataflows/{df_id}", params=params, timeout=40)
        if r.status_code != 200:
            raise BenchApiError(f"GET /api/v1/dataflows/{df_id} -> {r.status_code}: {r.text[:500]}")
        out: dict[str, Any] = r.json()
        return out

    def delete(self, df_id: str) -> int:
        return self.http.delete(f"/api/v1/dataflows/{df_id}").status_code

    def wait_state(
        self, df_id: str, states: set[str], timeout: float, interval: float = 0.02
    ) -> dict[str, Any]:
        """Poll until the dataflow is in one of ``states``; ``BenchApiError`` on timeout or failure."""
        deadline = time.monotonic() + timeout
        seen: list[str] = []
        while True:
            df = self.dataflow(df_id)
            if not seen or seen[-1] != df["state"]:
                seen.append(df["state"])
            if df["state"] in states:
                return df
            if df["state"] == "failed" and "failed" not in states:
                raise BenchApiError(f"dataflow {df_id} failed: {df.get('reason')}")
            if time.monotonic() > deadline:
                tasks = {t["id"]: (t["device"], t["state"], t["reason"]) for t in df["tasks"]}
                raise BenchApiError(
                    f"dataflow {df_id} not in {sorted(states)} after {timeout}s; "
                    f"states seen {seen}; reason {df.get('reason')!r}; tasks {tasks}"
                )
            time.sleep(interval)

    def stop(self, df_id: str, timeout: float = 30.0) -> dict[str, Any]:
        """DELETE the dataflow and wait until it is ``stopped``."""
        self.delete(df_id)
        return self.wait_state(df_id, {"stopped"}, timeout)


# ------------------------------------------------------------------------ the stack


@dataclass
class Stack:
    brokers: Brokers
    platform: Platform
    api: Api
    workdir: Path
    fleet: tuple[AgentSpec, ...]

    @property
    def logs(self) -> Path:
        return self.platform.logs


KEEP = False  # ``bench/run.py --keep``: every stack keeps its temp dir


@contextlib.contextmanager
def running_stack(
    *,
    keep: bool | None = None,
    extra_env: dict[str, str] | None = None,
    fleet: tuple[AgentSpec, ...] = FLEET,
    tls: bool = True,
    metrics: bool = True,
) -> Iterator[Stack]:
    """Brokers + the five services + the fleet, in a fresh temp dir; all stopped on exit.

    ``tls=False`` (the security_cost benchmark only): brokers without TLS (the same logins and
    ACLs: no stack accepts an anonymous client).
    ``metrics=False`` (metrics_cost): the services serve no /metrics."""
    workdir = Path(tempfile.mkdtemp(prefix="echo-bench-"))
    log(f"workdir {workdir}")
    # testbed_etl's namespaces dial the brokers and the API by TESTBED_HOST: the certificate names it
    brokers = start_brokers(workdir / "brokers", tester=True, tls=tls, hosts=(TESTBED_HOST,))
    platform: Platform | None = None
    api: Api | None = None
    try:
        log(f"brokers: nats {brokers.nats_url}, mqtt {brokers.mqtt_url}, redis {brokers.redis_url}")
        platform = Platform(
            brokers,
            workdir / "platform",
            namespace="b" + uuid.uuid4().hex[:8],
            extra_env=dict(extra_env or {}),
            metrics=metrics,
        )
        t0 = time.monotonic()
        platform.start(fleet, timeout=90)
        log(
            f"platform up in {time.monotonic() - t0:.1f}s: API {platform.api_url}, "
            f"fleet {[a.device_id for a in fleet]}"
        )
        api = Api(platform.api_url, platform.admin_token, platform.api_verify)
        yield Stack(brokers, platform, api, workdir, fleet)
    finally:
        if api is not None:
            api.close()
        if platform is not None:
            codes = platform.stop()
            bad = {k: v for k, v in codes.items() if v not in (0, None)}
            if bad:
                log(f"platform processes exited with non-zero codes: {bad}")
        brokers.stop()
        if keep or (keep is None and KEEP):
            log(f"kept workdir {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)


# ------------------------------------------------------------------------ log scan

_PLAIN = re.compile(r"\b(error|critical|traceback|warning)\b", re.IGNORECASE)
_LEVELS = {"warning", "error", "critical"}


def _level(line: str) -> tuple[str, str] | None:
    """(level, message) of a trouble line: JSON service logs, or plain broker/stderr output."""
    if line.startswith("{"):
        try:
            obj = orjson.loads(line)
        except orjson.JSONDecodeError:
            obj = None
        if isinstance(obj, dict):
            level = str(obj.get("level", "")).lower()
            if level in _LEVELS:
                exc = str(obj.get("exc", "")).strip().splitlines()
                tail = f" | {exc[-1]}" if exc else ""
                return level, f"{obj.get('logger', '')}: {obj.get('msg', '')}{tail}"
            return None
    m = _PLAIN.search(line)
    return (m.group(1).lower(), line.strip()) if m else None


def scan_logs(logs: Path, limit: int = 12) -> dict[str, Any]:
    """Count warning/error/critical lines per log file; keep the first few of each kind."""
    counts: dict[str, dict[str, int]] = {}
    errors: list[str] = []
    warnings: list[str] = []
    for path in sorted(logs.glob("*.log")):
        per: dict[str, int] = {}
        for line in path.read_text(errors="replace").splitlines():
            hit = _level(line)
            if hit is None:
                continue
            level, msg = hit
            per[level] = per.get(level, 0) + 1
            bucket = warnings if level == "warning" else errors
            if len(bucket) < limit:
                bucket.append(f"{path.name}: {msg[:300]}")
        if per:
            counts[path.name] = per
    return {"counts": counts, "first_errors": errors, "first_warnings": warnings}
