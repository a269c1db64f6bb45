"""Prometheus for a local stack: Debian's ``prometheus`` scraping the services' metrics.

Secured like everything else: it scrapes the services' ``/metrics`` over HTTPS presenting
its client certificate (the endpoints refuse anyone else), and serves its own API over
HTTPS to one login (``PROMETHEUS_LOGIN`` with the bundle's password; basic auth). Its data
lives under the stack's work directory.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from echo_shared.bundle import PROMETHEUS_LOGIN, Bundle, allow_traversal, prometheus_owner
from echo_shared.credentials import client_tls
from echo_shared.secretfiles import read_secret

from .brokers import BrokerSetupError
from .processes import ManagedProcess, start_on_free_port

PROMETHEUS_CANDIDATES = ("prometheus", "/usr/bin/prometheus")
SCRAPE_INTERVAL = 5.0  # seconds (a local stack; tests ask for less)


def prometheus_binary() -> str | None:
    for c in PROMETHEUS_CANDIDATES:
        found = shutil.which(c)
        if found:
            return found
    return None


def scrape_config(bundle: Bundle, targets: dict[str, str], interval: float) -> dict[str, Any]:
    """``targets``: service -> ``host:port`` of its metrics endpoint."""
    every = f"{max(1, round(interval * 1000))}ms"  # Prometheus durations are integers with a unit
    return {
        "global": {"scrape_interval": every, "evaluation_interval": every, "scrape_timeout": every},
        "scrape_configs": [
            {
                "job_name": "echo",
                "scheme": "https",
                "tls_config": {
                    "ca_file": str(bundle.ca_file),
                    "cert_file": str(bundle.scraper.cert),
                    "key_file": str(bundle.scraper.key),
                },
                "static_configs": [
                    {"targets": [addr], "labels": {"service": name}} for name, addr in sorted(targets.items())
                ],
            }
        ],
    }


@dataclass
class Prometheus:
    url: str
    process: ManagedProcess
    bundle: Bundle

    @property
    def login(self) -> tuple[str, str]:
        return PROMETHEUS_LOGIN, read_secret(self.bundle.prometheus_password_file)

    def client(self, timeout: float = 10.0) -> httpx.Client:
        return httpx.Client(
            base_url=self.url, auth=self.login, verify=client_tls(self.bundle.ca_file), timeout=timeout
        )

    def query(self, expr: str) -> list[dict[str, Any]]:
        """An instant query's result vector (``[{"metric": {...}, "value": [t, "v"]}, ...]``)."""
        with self.client() as c:
            r = c.get("/api/v1/query", params={"query": expr})
        r.raise_for_status()
        body = r.json()
        if body.get("status") != "success":
            raise RuntimeError(f"Prometheus query {expr!r} failed: {body}")
        return list(body["data"]["result"])

    def wait_ready(self, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        last = ""
        while time.monotonic() < deadline:
            if not self.process.alive():
                raise RuntimeError(
                    f"prometheus exited with {self.process.returncode}: {self.process.log_tail()}"
                )
            try:
                with self.client(timeout=2) as c:
                    r = c.get("/-/ready")
                if r.status_code == 200:
                    return
                last = f"HTTP {r.status_code}"
            except httpx.HTTPError as e:
                last = str(e)
            time.sleep(0.1)
        raise TimeoutError(f"Prometheus not ready after {timeout}s: {last}")

    def stop(self, timeout: float = 10.0) -> int | None:
        return self.process.stop(timeout)


def start_prometheus(
    workdir: Path,
    bundle: Bundle,
    targets: dict[str, str],
    *,
    host: str = "127.0.0.1",
    interval: float = SCRAPE_INTERVAL,
    logs: Path | None = None,
) -> Prometheus:
    binary = prometheus_binary()
    if binary is None:
        raise BrokerSetupError(
            "Prometheus is not installed. Install it with 'apt-get install -y prometheus' "
            "(make does this when run as root)."
        )
    workdir.mkdir(parents=True, exist_ok=True)
    data = workdir / "data"
    data.mkdir(exist_ok=True)
    conf = workdir / "prometheus.yml"
    conf.write_text(json.dumps(scrape_config(bundle, targets, interval), indent=2))  # JSON is YAML
    owner = prometheus_owner()
    if owner is not None:  # as its own account (when we are root), never as root
        for p in (workdir, data, conf):
            os.chown(p, *owner)
        allow_traversal(workdir.parent)  # it must reach its directory (e.g. below pytest's 0700 base)

    def start(port: int) -> ManagedProcess:
        return ManagedProcess(
            "prometheus",
            [
                binary,
                f"--config.file={conf}",
                f"--web.config.file={bundle.prometheus_web_config}",
                f"--web.listen-address={host}:{port}",
                f"--storage.tsdb.path={data}",
                "--storage.tsdb.retention.time=2d",
            ],
            log_dir=logs or workdir / "logs",
            cwd=workdir,
            run_as=owner,
        )

    port, proc = start_on_free_port(host, start, timeout=30)
    prometheus = Prometheus(f"https://{host}:{port}", proc, bundle)
    prometheus.wait_ready()
    return prometheus
