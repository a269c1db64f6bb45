"""``echo-agent --device-id ID --tier edge|fog|cloud [--input-stream NAME]... [--label k=v]...
[--cpu N] [--memory-mb N]``; brokers from ``ECHO_MQTT_URL`` (and ``ECHO_NATS_URL``).

Placement inputs: ``--site NAME``, ``--broker mqtt|nats`` (the data brokers this device
reaches; default: mqtt, plus nats when ``ECHO_NATS_URL`` is set), ``--inbound``,
``--uplink-latency-ms X --uplink-mbps Y`` (its path to the brokers), ``--link SITE=MS:MBPS``
(paths to other sites), ``--accelerator KIND=N``.

What the device runs: ``python`` always, ``onnx`` when ONNX Runtime imports; ``--runtime
process`` / ``--runtime container`` *enable* the runtimes that run programs of the
deployer's choosing (off by default; ``container`` also needs a Docker engine). Naming a
default runtime is allowed and changes nothing; ``--runtime`` never disables one
(``echo_agent.runtimes.gating``). ``--run-as USER`` (default ``nobody`` when the agent is
root): the user external programs run as (``echo_agent.runtimes.sandbox``)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
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
    p.add_argument(
        "--records-per-s",
        type=float,
        help="records/s one core of this agent forwards (default: measured at start)",
    )
    p.add_argument("--data-dir", help="working directory for tasks")
    p.add_argument(
        "--state-dir",
        help="the device's identity: credentials.json (0600) and the CA, written at enrolment, reused after",
    )
    p.add_argument(
        "--enrol-token-file",
        metavar="FILE",
        help="the enrolment token, read from a file (mode 0600) instead of the command line",
    )
    p.add_argument(
        "--enrol-token",
        metavar="TOKEN",
        help="one-time enrolment token (echoctl devices enrol ID --tier T); needs --state-dir, ECHO_API_URL",
    )
    p.add_argument("--site", help="where the device is (devices of one site share a LAN)")
    p.add_argument(
        "--broker",
        action="append",
        choices=["mqtt", "nats"],
        metavar="mqtt|nats",
        help="a data broker this device reaches (repeatable)",
    )
    p.add_argument("--inbound", action="store_true", help="the device accepts inbound connections")
    p.add_argument("--uplink-latency-ms", type=float, help="one-way latency to the brokers")
    p.add_argument("--uplink-mbps", type=float, help="bandwidth to the brokers")
    p.add_argument(
        "--link",
        action="append",
        default=[],
        metavar="SITE=MS:MBPS",
        help="latency and bandwidth to another site (repeatable)",
    )
    p.add_argument(
        "--accelerator",
        action="append",
        default=[],
        metavar="KIND=N",
        help="an accelerator the device has (repeatable)",
    )
    p.add_argument(
        "--runtime",
        action="append",
        choices=["process", "container", "python", "onnx"],
        metavar="NAME",
        help="enable a runtime on top of the defaults (python; onnx when ONNX Runtime imports): "
        "process (external commands), container (needs a Docker engine); repeatable; never disables one",
    )
    p.add_argument(
        "--run-as",
        metavar="USER",
        help="user that external programs run as (default: nobody when the agent is root; "
        "an agent that is not root runs them as itself)",
    )
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
    if a.enrol_token is not None and a.enrol_token_file is not None:
        p.error("give --enrol-token or --enrol-token-file, not both")
    if a.enrol_token is not None:
        out["_enrol_token"] = a.enrol_token
    if a.enrol_token_file is not None:
        out["_enrol_token_file"] = a.enrol_token_file
    for name in ("cpu", "memory_mb", "records_per_s", "data_dir", "site", "state_dir"):
        if getattr(a, name) is not None:
            out[name] = getattr(a, name)
    if a.broker:
        out["brokers"] = a.broker
    if a.inbound:
        out["inbound"] = True
    if a.runtime:
        out["runtimes"] = a.runtime
    if a.run_as is not None:
        out["run_as"] = a.run_as
    if (a.uplink_latency_ms is None) != (a.uplink_mbps is None):
        p.error("--uplink-latency-ms and --uplink-mbps go together")
    if a.uplink_latency_ms is not None:
        out["uplink"] = {"latency_ms": a.uplink_latency_ms, "bandwidth_mbps": a.uplink_mbps}
    links: dict[str, dict[str, float]] = {}
    for item in a.link:
        site, sep, rest = item.partition("=")
        ms, sep2, mbps = rest.partition(":")
        try:
            links[site] = {"latency_ms": float(ms), "bandwidth_mbps": float(mbps)}
        except ValueError:
            p.error(f"--link expects SITE=MS:MBPS, got {item!r}")
        if not sep or not sep2 or not site:
            p.error(f"--link expects SITE=MS:MBPS, got {item!r}")
    if links:
        out["links"] = links
    accelerators: dict[str, int] = {}
    for item in a.accelerator:
        kind, sep, n = item.partition("=")
        if not sep or not kind or not n.isdigit():
            p.error(f"--accelerator expects KIND=N, got {item!r}")
        accelerators[kind] = int(n)
    if accelerators:
        out["accelerators"] = accelerators
    return out


def main(argv: list[str] | None = None) -> None:
    from pydantic import ValidationError

    from echo_shared.lifecycle import run_service

    from .app import run
    from .identity import EnrolmentFailed, credentials_path, load_or_enrol, read_token_file
    from .settings import AgentSettings

    overrides = parse_args(argv)
    enrol_token = overrides.pop("_enrol_token", None)
    token_file = overrides.pop("_enrol_token_file", None)
    try:
        settings = AgentSettings(**overrides)
    except ValidationError as e:
        for err in e.errors():
            loc = ".".join(str(x) for x in err["loc"])
            print(f"echo-agent: {loc}: {err['msg']}", file=sys.stderr)  # noqa: T201
        sys.exit(2)
    try:
        if token_file is not None and not (
            settings.state_dir and credentials_path(settings.state_dir).exists()
        ):
            enrol_token = read_token_file(Path(token_file))
        creds = load_or_enrol(settings, enrol_token)
    except EnrolmentFailed as e:
        print(f"echo-agent: {e}", file=sys.stderr)  # noqa: T201
        sys.exit(2)
    sys.exit(
        run_service(
            settings.service_name,
            lambda stop: run(settings, stop, creds),
            log_level=settings.log_level,
            attributes={"echo.device": settings.device_id},
        )
    )


if __name__ == "__main__":
    main()
