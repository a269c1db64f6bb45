"""The emulated fleet of ``echoctl testbed up``: devices, their tiers and capacities, and
the network path each one has to the brokers.

Default (``DEFAULT_TESTBED``):

| device  | tier  | site   | capacity         | path to the brokers                      | brokers     |
|---------|-------|--------|------------------|------------------------------------------|-------------|
| edge-1  | edge  | edge-a | 1 CPU, 512 MiB   | +40 ms each way, 10 Mbit/s (hosts ``taxi-feed``) | MQTT  |
| edge-2  | edge  | edge-b | 1 CPU, 512 MiB   | +40 ms each way, 10 Mbit/s               | MQTT        |
| fog-1   | fog   | fog    | 2 CPU, 2048 MiB  | +10 ms each way, 100 Mbit/s              | MQTT, NATS  |
| cloud-1 | cloud | cloud  | 4 CPU, 8192 MiB  | none: next to the brokers                | MQTT, NATS  |

A device with a latency or a bandwidth runs in a network namespace of its own and
reaches the brokers only through the delay proxy (see ``network.py``, ``runner.py``);
one with neither runs in the root namespace and connects to the brokers directly.
Every agent declares its path (``--uplink-latency-ms``, ``--uplink-mbps``; ``LOCAL_MBPS``
for a device next to the brokers) and its ``--site``, so placement can use them before
any round trip is measured.

Another fleet can be given as YAML (``echoctl testbed up --fleet FILE``)::

    devices:
      - {id: edge-1, tier: edge, site: edge-a, cpu: 1, memory_mb: 512,
         input_streams: [taxi-feed], latency_ms: 40, mbps: 10, brokers: [mqtt]}
      - {id: cloud-1, tier: cloud, cpu: 4, memory_mb: 8192}

Fields: ``id``, ``tier`` (required), ``site`` (default: the id), ``cpu``, ``memory_mb``,
``input_streams``, ``labels``, ``latency_ms`` (one way, default 0), ``mbps`` (default:
unshaped), ``brokers`` (default ``[mqtt]`` for edge devices, else ``[mqtt, nats]``).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from echo_shared.documents import DocumentError, load_document

from ..devstack.platform import AgentSpec

LOCAL_MBPS = 1000.0  # what a device next to the brokers declares as its uplink bandwidth
MAX_DEVICES = 200  # one /24 per testbed: device addresses .10 .. .209


class FleetError(ValueError):
    """A fleet file is missing, unreadable or invalid (the message names the field)."""


@dataclass(frozen=True)
class TestbedDevice(AgentSpec):
    """An agent of the testbed: what it declares, and the path the testbed gives it."""

    __test__ = False  # not a pytest class, despite the name

    site: str = ""
    latency_ms: float = 0.0  # one way, added in each direction by the delay proxy
    mbps: float | None = None  # tc tbf rate in each direction; None = unshaped
    brokers: tuple[str, ...] = ("mqtt", "nats")  # explicit here (``AgentSpec``'s default: the agent decides)

    @property
    def isolated(self) -> bool:
        """Runs in a namespace of its own, behind the delay proxy (and tbf)."""
        return self.latency_ms > 0 or self.mbps is not None

    def argv(self) -> list[str]:
        out = super().argv()
        if self.site:
            out += ["--site", self.site]
        out += ["--uplink-latency-ms", f"{self.latency_ms:g}"]
        out += ["--uplink-mbps", f"{self.mbps if self.mbps is not None else LOCAL_MBPS:g}"]
        return out  # the base adds --broker per entry of ``brokers``

    def describe(self) -> str:
        path = (
            f"+{self.latency_ms:g} ms each way" + (f", {self.mbps:g} Mbit/s" if self.mbps is not None else "")
            if self.isolated
            else "next to the brokers"
        )
        return f"{self.device_id} ({self.tier}, {path})"


DEFAULT_TESTBED: tuple[TestbedDevice, ...] = (
    TestbedDevice(
        "edge-1",
        "edge",
        input_streams=("taxi-feed",),
        cpu=1.0,
        memory_mb=512,
        site="edge-a",
        latency_ms=40.0,
        mbps=10.0,
        brokers=("mqtt",),
    ),
    TestbedDevice(
        "edge-2", "edge", cpu=1.0, memory_mb=512, site="edge-b", latency_ms=40.0, mbps=10.0, brokers=("mqtt",)
    ),
    TestbedDevice("fog-1", "fog", cpu=2.0, memory_mb=2048, site="fog", latency_ms=10.0, mbps=100.0),
    TestbedDevice("cloud-1", "cloud", cpu=4.0, memory_mb=8192, site="cloud"),
)


# ---------------------------------------------------------------------- the YAML file


class _Device(BaseModel):
    model_config = ConfigDict(extra="forbid")

    id: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$")
    tier: Literal["edge", "fog", "cloud"]
    site: str = ""
    cpu: float | None = Field(default=None, gt=0)
    memory_mb: int | None = Field(default=None, gt=0)
    input_streams: list[str] = Field(default_factory=list)
    labels: dict[str, str] = Field(default_factory=dict)
    latency_ms: float = Field(default=0.0, ge=0, le=10_000)
    mbps: float | None = Field(default=None, gt=0, le=100_000)
    brokers: list[Literal["mqtt", "nats"]] | None = None

    @field_validator("brokers")
    @classmethod
    def _mqtt_always(cls, v: list[str] | None) -> list[str] | None:
        if v is not None and "mqtt" not in v:
            raise ValueError("every agent reaches MQTT (its control channel); list mqtt")
        return v

    def device(self) -> TestbedDevice:
        brokers = self.brokers or (["mqtt"] if self.tier == "edge" else ["mqtt", "nats"])
        return TestbedDevice(
            self.id,
            self.tier,
            input_streams=tuple(self.input_streams),
            labels=tuple(sorted(self.labels.items())),
            cpu=self.cpu,
            memory_mb=self.memory_mb,
            site=self.site or self.id,
            latency_ms=self.latency_ms,
            mbps=self.mbps,
            brokers=tuple(dict.fromkeys(brokers)),
        )


class _Fleet(BaseModel):
    model_config = ConfigDict(extra="forbid")

    devices: list[_Device] = Field(min_length=1, max_length=MAX_DEVICES)

    @field_validator("devices")
    @classmethod
    def _unique(cls, v: list[_Device]) -> list[_Device]:
        seen: set[str] = set()
        for d in v:
            if d.id in seen:
                raise ValueError(f"device id {d.id!r} appears twice")
            seen.add(d.id)
        return v


def parse_fleet(data: Any, source: str = "fleet") -> tuple[TestbedDevice, ...]:
    """Devices from the parsed YAML document ``data``; ``FleetError`` naming the field."""
    try:
        fleet = _Fleet.model_validate(data)
    except ValidationError as e:
        problems = []
        for err in e.errors():
            loc = "".join(f"[{x}]" if isinstance(x, int) else f".{x}" for x in err["loc"]).lstrip(".")
            problems.append(f"{loc or '(top level)'}: {err['msg']}")
        raise FleetError(f"{source}: " + "; ".join(problems)) from None
    return tuple(d.device() for d in fleet.devices)


def load_fleet(path: Path) -> tuple[TestbedDevice, ...]:
    try:
        text = path.read_text()
    except OSError as e:
        raise FleetError(f"cannot read fleet file {path}: {e.strerror or e}") from e
    try:
        data = load_document(text)
    except DocumentError as e:
        raise FleetError(f"{path}: not valid YAML: {e}") from e
    return parse_fleet(data, str(path))
