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
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
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
    _masks: dict[tuple[str, str], BoolArray] = field(default_factory=dict)
    _index: dict[str, dict[str, list[int]]] = field(default_factory=dict)

    @classmethod
    def of(cls, devices: Sequence[DeviceRecord]) -> Fleet:
        devs = tuple(sorted(devices, key=lambda d: d.id))
        cloud_sites = frozenset(d.site for d in devs if d.tier is Tier.cloud and d.site)
        code = np.array(
            [sum({BROKER_BITS[b] for b in d.connectivity.brokers if b in BROKER_BITS}) for d in devs],
            dtype=np.int64,
        )
        ow_m = np.array([one_way_ms(d, "mqtt", cloud_sites) for d in devs], dtype=np.float64)
        ow_n = np.array([one_way_ms(d, "nats", cloud_sites) for d in devs], dtype=np.float64)
        ow_m[(code & MQTT) == 0] = np.inf
        ow_n[(code & NATS) == 0] = np.inf
        bw = np.array([bandwidth_mbps(d, cloud_sites) for d in devs], dtype=np.float64)
        return cls(
            devices=devs,
            index={d.id: i for i, d in enumerate(devs)},
            online=np.array([d.status is DeviceStatus.online for d in devs], dtype=np.bool_),
            code=code,
            ow_mqtt=ow_m,
            ow_nats=ow_n,
            bandwidth=bw,
            serf=8.0 / (bw * 1000.0),
            cap_cpu=np.array([d.capacity.cpu for d in devs], dtype=np.float64),
            cap_mem=np.array([float(d.capacity.memory_mb) for d in devs], dtype=np.float64),
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
            if not self._index:
                self._build_index()
            got = np.zeros(len(self.devices), dtype=np.bool_)
            if kind not in self._index:
                raise ValueError(f"unknown device property {kind!r}")
            got[self._index[kind].get(value, [])] = True
            got.setflags(write=False)
            self._masks[key] = got
        return got

    def _build_index(self) -> None:
        index: dict[str, dict[str, list[int]]] = {
            k: {} for k in ("tier", "stream", "label", "runtime", "device", "online")
        }
        for i, d in enumerate(self.devices):
            index["tier"].setdefault(d.tier.value, []).append(i)
            index["device"].setdefault(d.id, []).append(i)
            if d.status is DeviceStatus.online:
                index["online"].setdefault("", []).append(i)
            for s in set(d.input_streams):
                index["stream"].setdefault(s, []).append(i)
            for k, v in d.labels.items():
                index["label"].setdefault(f"{k}={v}", []).append(i)
            for r in set(d.runtimes):
                index["runtime"].setdefault(r, []).append(i)
        self._index = index


@dataclass
class Ledger:
    """What is free on each device while a placement is built (copied per strategy)."""

    free_cpu: FloatArray
    free_mem: FloatArray
    used_cpu: FloatArray  # reserved by other dataflows + placed here
    used_mem: FloatArray
    free_acc: dict[str, IntArray]
    traffic: FloatArray  # Mbit/s of this dataflow through each device's uplink

    @classmethod
    def of(cls, fleet: Fleet, reserved: Mapping[str, Reservation]) -> Ledger:
        n = len(fleet)
        used_cpu = np.zeros(n)
        used_mem = np.zeros(n)
        kinds = sorted({k for d in fleet.devices for k in d.accelerators})
        free_acc = {
            k: np.array([d.accelerators.get(k, 0) for d in fleet.devices], dtype=np.int64) for k in kinds
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
        return cls(
            free_cpu=fleet.cap_cpu - used_cpu,
            free_mem=fleet.cap_mem - used_mem,
            used_cpu=used_cpu,
            used_mem=used_mem,
            free_acc=free_acc,
            traffic=np.zeros(n),
        )

    def copy(self) -> Ledger:
        return Ledger(
            free_cpu=self.free_cpu.copy(),
            free_mem=self.free_mem.copy(),
            used_cpu=self.used_cpu.copy(),
            used_mem=self.used_mem.copy(),
            free_acc={k: v.copy() for k, v in self.free_acc.items()},
            traffic=self.traffic.copy(),
        )

    def acc_free(self, kind: str) -> IntArray:
        got = self.free_acc.get(kind)
        if got is None:
            got = np.zeros(len(self.free_cpu), dtype=np.int64)
            self.free_acc[kind] = got
        return got

    def take(
        self, i: int, cpu: float, mem: float, acc: Mapping[str, int] | None = None, traffic: float = 0.0
    ) -> None:
        self.free_cpu[i] -= cpu
        self.free_mem[i] -= mem
        self.used_cpu[i] += cpu
        self.used_mem[i] += mem
        for kind, n in (acc or {}).items():
            self.acc_free(kind)[i] -= n
        self.traffic[i] += traffic

    def give(
        self, i: int, cpu: float, mem: float, acc: Mapping[str, int] | None = None, traffic: float = 0.0
    ) -> None:
        self.take(i, -cpu, -mem, {k: -n for k, n in (acc or {}).items()}, -traffic)
