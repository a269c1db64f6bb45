"""The fleet as placement sees it: devices sorted by id, their static properties as numpy
arrays (one slot per device), masks for the hard constraints, and the ledger of free
resources that placing tasks consumes.

Devices are sorted by id and every computation runs in that order, so the same devices
given in any order give the same placement. Network properties of a device:

* the brokers it reaches, as a bit mask ``code`` (``MQTT`` = 1, ``NATS`` = 2); unknown
  broker names are ignored;
* its one-way latency to each broker (ms): the declared ``uplink.latency_ms``, else half
  the measured ``rtt_ms[broker]``, else its declared link to a site that hosts a cloud
  device (the brokers run in the cloud), else a tier default (edge 20, fog 5, cloud 1);
* its uplink bandwidth (Mbit/s): ``uplink.bandwidth_mbps``, else that link's, else a
  tier default (edge 20, fog 100, cloud 1,000).

Its processing speed: ``capacity.records_per_s``, the records/s one core of its agent
forwards (measured by the agent at start), else a tier default (edge 20,000, fog 50,000,
cloud 100,000); and its cores, ``capacity.cpu`` (at least one).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TypeAlias

import numpy as np
import numpy.typing as npt

from echo_shared.models import DeviceRecord, DeviceStatus, Link, Tier

FloatArray: TypeAlias = npt.NDArray[np.float64]
BoolArray: TypeAlias = npt.NDArray[np.bool_]
IntArray: TypeAlias = npt.NDArray[np.int64]

MQTT = 1
NATS = 2
BROKER_BITS = {"mqtt": MQTT, "nats": NATS}
BROKER_NAMES = {MQTT: "mqtt", NATS: "nats"}

TIER_LATENCY_MS = {Tier.edge: 20.0, Tier.fog: 5.0, Tier.cloud: 1.0}
TIER_BANDWIDTH_MBPS = {Tier.edge: 20.0, Tier.fog: 100.0, Tier.cloud: 1000.0}
TIER_RECORDS_PER_S = {Tier.edge: 20_000.0, Tier.fog: 50_000.0, Tier.cloud: 100_000.0}

# what other dataflows hold on a device: (cpu, memory MiB) or (cpu, memory MiB, {accelerator: n})
Reservation: TypeAlias = tuple[float, float] | tuple[float, float, Mapping[str, int]]


def _cloud_link(d: DeviceRecord, cloud_sites: frozenset[str]) -> Link | None:
    links = [link for site, link in sorted(d.links.items()) if site in cloud_sites and site != d.site]
    return min(links, key=lambda x: (x.latency_ms, -x.bandwidth_mbps)) if links else None


def one_way_ms(d: DeviceRecord, broker: str, cloud_sites: frozenset[str] = frozenset()) -> float:
    """The one-way latency of ``d`` to ``broker`` (see the module docstring)."""
    if d.uplink is not None:
        return d.uplink.latency_ms
    if broker in d.rtt_ms:
        return d.rtt_ms[broker] / 2.0
    link = _cloud_link(d, cloud_sites)
    return link.latency_ms if link is not None else TIER_LATENCY_MS[d.tier]


def bandwidth_mbps(d: DeviceRecord, cloud_sites: frozenset[str] = frozenset()) -> float:
    if d.uplink is not None:
        return d.uplink.bandwidth_mbps
    link = _cloud_link(d, cloud_sites)
    return link.bandwidth_mbps if link is not None else TIER_BANDWIDTH_MBPS[d.tier]


@dataclass
class Fleet:
    """Static device properties, index ``i`` = the ``i``-th device by id."""

    devices: tuple[DeviceRecord, ...]
    index: dict[str, int]
    online: BoolArray
    code: IntArray  # broker bit mask
    ow_mqtt: FloatArray  # one-way latency to the MQTT broker (inf if not reached)
    ow_nats: FloatArray
    bandwidth: FloatArray  # Mbit/s
    serf: FloatArray  # ms per byte through the uplink: 8 / (bandwidth * 1000)
    cap_cpu: FloatArray
    cap_mem: FloatArray
    speed: FloatArray  # records/s one core of the agent forwards
    cores: FloatArray  # cores its tasks can use (at least one)
    acc_kinds: tuple[str, ...] = ()  # accelerator kinds some device has
    _masks: dict[tuple[str, str], BoolArray] = field(default_factory=dict)
    _index: dict[str, dict[str, list[int]]] = field(default_factory=dict)

    @classmethod
    def of(cls, devices: Sequence[DeviceRecord]) -> Fleet:
        devs = tuple(sorted(devices, key=lambda d: d.id))
        cloud_sites = frozenset(d.site for d in devs if d.tier is Tier.cloud and d.site)
        # one pass into Python lists (numpy item writes cost more): at 10,000 devices every
        # attribute read counts, and a move of one task builds this fleet
        code: list[int] = []
        ow_m: list[float] = []
        ow_n: list[float] = []
        bw: list[float] = []
        online: list[bool] = []
        cap_cpu: list[float] = []
        cap_mem: list[float] = []
        speed: list[float] = []
        codes: dict[tuple[str, ...], int] = {}
        tiers: dict[Tier, list[int]] = {}
        runtimes: dict[str, list[int]] = {}
        acc_kinds: set[str] = set()
        up = DeviceStatus.online
        for i, d in enumerate(devs):
            brokers = tuple(d.connectivity.brokers)
            c = codes.get(brokers)
            if c is None:
                c = codes[brokers] = sum({BROKER_BITS[b] for b in brokers if b in BROKER_BITS})
            code.append(c)
            tiers.setdefault(d.tier, []).append(i)
            for r in d.runtimes:
                got = runtimes.setdefault(r, [])
                if not got or got[-1] != i:
                    got.append(i)
            if d.accelerators:
                acc_kinds.update(d.accelerators)
            link = d.uplink
            if link is not None:  # the common case of one_way_ms / bandwidth_mbps, inline
                ow_m.append(link.latency_ms)
                ow_n.append(link.latency_ms)
                bw.append(link.bandwidth_mbps)
            else:
                ow_m.append(one_way_ms(d, "mqtt", cloud_sites))
                ow_n.append(one_way_ms(d, "nats", cloud_sites))
                bw.append(bandwidth_mbps(d, cloud_sites))
            online.append(d.status is up)
            cap = d.capacity
            cap_cpu.append(cap.cpu)
            cap_mem.append(cap.memory_mb)
            speed.append(cap.records_per_s or TIER_RECORDS_PER_S[d.tier])
        codes_a = np.array(code, dtype=np.int64)
        ow_ma, ow_na, bw_a = np.array(ow_m, dtype=np.float64), np.array(ow_n, dtype=np.float64), np.array(bw)
        ow_ma[(codes_a & MQTT) == 0] = np.inf
        ow_na[(codes_a & NATS) == 0] = np.inf
        return cls(
            devices=devs,
            index={d.id: i for i, d in enumerate(devs)},
            online=np.array(online, dtype=np.bool_),
            code=codes_a,
            ow_mqtt=ow_ma,
            ow_nats=ow_na,
            bandwidth=bw_a,
            serf=8.0 / (bw_a * 1000.0),
            cap_cpu=np.array(cap_cpu, dtype=np.float64),
            cap_mem=np.array(cap_mem, dtype=np.float64),
            speed=np.array(speed, dtype=np.float64),
            cores=np.maximum(np.array(cap_cpu, dtype=np.float64), 1.0),
            acc_kinds=tuple(sorted(acc_kinds)),
            _index={"tier": {t.value: v for t, v in tiers.items()}, "runtime": runtimes},
        )

    def __len__(self) -> int:
        return len(self.devices)

    def ids(self, idx: Sequence[int] | IntArray) -> list[str]:
        return [self.devices[int(i)].id for i in idx]

    def one_way(self, i: int, broker: int) -> float:
        return float(self.ow_nats[i] if broker == NATS else self.ow_mqtt[i])

    def brokers_of(self, i: int) -> list[str]:
        return [BROKER_NAMES[b] for b in (MQTT, NATS) if int(self.code[i]) & b]

    # ------------------------------------------------------------------ constraint masks

    def mask(self, kind: str, value: str) -> BoolArray:
        """Devices with a property: ``("tier", "edge")``, ``("stream", s)``, ``("label", "k=v")``,
        ``("runtime", r)``, ``("device", id)``, ``("online", "")`` (cached, read-only)."""
        key = (kind, value)
        got = self._masks.get(key)
        if got is None:
            got = np.zeros(len(self.devices), dtype=np.bool_)
            if kind == "online":
                got[:] = self.online
            elif kind == "device":
                if value in self.index:
                    got[self.index[value]] = True
            else:
                got[self._indexed(kind).get(value, [])] = True
            got.setflags(write=False)
            self._masks[key] = got
        return got

    def _indexed(self, kind: str) -> dict[str, list[int]]:
        """Device positions by value of one property (tier and runtime from ``of``, the others
        built on first use: a move of one task asks few)."""
        got = self._index.get(kind)
        if got is not None:
            return got
        values: Callable[[DeviceRecord], Iterable[str]]
        if kind == "stream":
            values = _streams
        elif kind == "label":
            values = _labels
        else:
            raise ValueError(f"unknown device property {kind!r}")
        got = {}
        for i, d in enumerate(self.devices):
            for v in values(d):
                got.setdefault(v, []).append(i)
        self._index[kind] = got
        return got


def _streams(d: DeviceRecord) -> Iterable[str]:
    return set(d.input_streams)


def _labels(d: DeviceRecord) -> Iterable[str]:
    return [f"{k}={v}" for k, v in d.labels.items()]


@dataclass
class Ledger:
    """What is free on each device while a placement is built (copied per strategy)."""

    free_cpu: FloatArray
    free_mem: FloatArray
    used_cpu: FloatArray  # reserved by other dataflows + placed here
    used_mem: FloatArray
    free_acc: dict[str, IntArray]
    traffic: FloatArray  # Mbit/s of this dataflow through each device's uplink
    loop: FloatArray  # records/s (forwarding equivalents) this dataflow puts on each agent's loop
    busy: FloatArray  # ... on each agent as a whole (its loop and its worker processes)

    @classmethod
    def of(
        cls,
        fleet: Fleet,
        reserved: Mapping[str, Reservation],
        processing: Mapping[str, tuple[float, float]] | None = None,
    ) -> Ledger:
        """``processing``: (loop, worker) records/s that tasks outside the problem put on a
        device's agent (the rest of a dataflow whose neighbourhood is placed)."""
        n = len(fleet)
        used_cpu = np.zeros(n)
        used_mem = np.zeros(n)
        free_acc = {
            k: np.array([d.accelerators.get(k, 0) for d in fleet.devices], dtype=np.int64)
            for k in fleet.acc_kinds
        }
        for dev_id, res in reserved.items():
            i = fleet.index.get(dev_id)
            if i is None:
                continue
            used_cpu[i] += float(res[0])
            used_mem[i] += float(res[1])
            if len(res) == 3:
                for kind, count in res[2].items():
                    if kind in free_acc:
                        free_acc[kind][i] -= int(count)
        loop, busy = np.zeros(n), np.zeros(n)
        for dev_id, (on_loop, on_worker) in (processing or {}).items():
            i = fleet.index.get(dev_id)
            if i is not None:
                loop[i] += on_loop
                busy[i] += on_loop + on_worker
        return cls(
            free_cpu=fleet.cap_cpu - used_cpu,
            free_mem=fleet.cap_mem - used_mem,
            used_cpu=used_cpu,
            used_mem=used_mem,
            free_acc=free_acc,
            traffic=np.zeros(n),
            loop=loop,
            busy=busy,
        )

    def copy(self) -> Ledger:
        return Ledger(
            free_cpu=self.free_cpu.copy(),
            free_mem=self.free_mem.copy(),
            used_cpu=self.used_cpu.copy(),
            used_mem=self.used_mem.copy(),
            free_acc={k: v.copy() for k, v in self.free_acc.items()},
            traffic=self.traffic.copy(),
            loop=self.loop.copy(),
            busy=self.busy.copy(),
        )

    def acc_free(self, kind: str) -> IntArray:
        got = self.free_acc.get(kind)
        if got is None:
            got = np.zeros(len(self.free_cpu), dtype=np.int64)
            self.free_acc[kind] = got
        return got

    def take(
        self,
        i: int,
        cpu: float,
        mem: float,
        acc: Mapping[str, int] | None = None,
        traffic: float = 0.0,
        loop: float = 0.0,
        work: float = 0.0,
    ) -> None:
        """``loop``/``work``: records/s of processing in the agent's loop / in worker processes."""
        self.free_cpu[i] -= cpu
        self.free_mem[i] -= mem
        self.used_cpu[i] += cpu
        self.used_mem[i] += mem
        for kind, n in (acc or {}).items():
            self.acc_free(kind)[i] -= n
        self.traffic[i] += traffic
        self.loop[i] += loop
        self.busy[i] += loop + work

    def give(
        self,
        i: int,
        cpu: float,
        mem: float,
        acc: Mapping[str, int] | None = None,
        traffic: float = 0.0,
        loop: float = 0.0,
        work: float = 0.0,
    ) -> None:
        self.take(i, -cpu, -mem, {k: -n for k, n in (acc or {}).items()}, -traffic, -loop, -work)
