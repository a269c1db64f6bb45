"""``echo-agent --device-id ID --tier edge|fog|cloud [--input-stream NAME]... [--label k=v]...
[--cpu N] [--memory-mb N]``; brokers from ``ECHO_MQTT_URL`` (and ``ECHO_NATS_URL``)."""

from __future__ import annotations

import argparse
import sys
from typing import Any


def parse_args(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(prog="echo-agent", description="ECHO platform agent (one per device)")
    p.add_argument("--device-id", required=True, help="unique id of this device")
    p.add_argument("--tier", required=True, choices=["edge", "fog", "cloud"])
    p.add_argument(
        "--input-stream",
        action="append",
        default=[],
        metavar="NAME",
        help="an input stream this device hosts (repeatable)",
    )
    p.add_argument("--label", action="append", default=[], metavar="K=V", help="a label (repeatable)")
    p.add_argument("--cpu", type=float, help="CPU cores offered to tasks (default: all)")
    p.add_argument("--memory-mb", type=int, help="memory offered to tasks in MiB (default: all)")
    p.add_argument("--data-dir", help="working directory for tasks")
    a = p.parse_args(argv)
    labels: dict[str, str] = {}
    for item in a.label:
        k, sep, v = item.partition("=")
        if not sep or not k:
            p.error(f"--label expects k=v, got {item!r}")
        labels[k] = v
    out: dict[str, Any] = {
        "device_id": a.device_id,
        "tier": a.tier,
        "input_streams": a.input_stream,
        "labels": labels,
    }
    for name in ("cpu", "memory_mb", "data_dir"):
        if getattr(a, name) is not None:
            out[name] = getattr(a, name)
    return out


def main(argv: list[str] | None = None) -> None:
    from pydantic import ValidationError

    from echo_shared.lifecycle import run_service

    from .app import run
    from .settings import AgentSettings

    overrides = parse_args(argv)
    try:
        settings = AgentSettings(**overrides)
    except ValidationError as e:
        for err in e.errors():
            loc = ".".join(str(x) for x in err["loc"])
            print(f"echo-agent: {loc}: {err['msg']}", file=sys.stderr)  # noqa: T201
        sys.exit(2)
    sys.exit(
        run_service(
            settings.service_name,
            lambda stop: run(settings, stop),
            log_level=settings.log_level,
            attributes={"echo.device": settings.device_id},
        )
    )


if __name__ == "__main__":
    main()
