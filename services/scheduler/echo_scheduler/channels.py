"""Channels and relays: how each edge crosses from its producer's device to its consumer's.

* both devices reach NATS -> a JetStream subject (``names.data_subject``);
* else both reach MQTT -> an MQTT topic (``names.data_topic``);
* else a relay (``core.relay``, id ``relay_id(spec, k)``) on an online device with the
  Python runtime that reaches a broker of each end, 0.05 CPU and 32 MiB reserved there:
  the cheapest by ``one_way(r, β1) + one_way(r, β2) + 2 · bytes · serf(r)``, ties by id;
  its two legs are channels from/to the relay's id;
* else ``RouteError`` naming the edge and why.

``Router`` answers the same questions for strategies, vectorised over candidate devices
(``hops``), ignoring the relay's capacity; ``select`` makes the final choice.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from echo_shared.models import ChannelSpec, DataflowSpec, RelayPlacement
from echo_shared.names import Names
from echo_shared.placement_graph import relay_id

from .costs import PROC_MS
from .errors import RouteError
from .fleet import BROKER_NAMES, MQTT, NATS, BoolArray, Fleet, FloatArray, IntArray, Ledger

RELAY_CPU = 0.05
RELAY_MEM_MB = 32.0
EPS = 1e-9


def _reach(code: int) -> str:
    names = [BROKER_NAMES[b] for b in (MQTT, NATS) if code & b]
    if not names:
        return "no broker"
    return f"only {names[0]}" if len(names) == 1 else " and ".join(names)


class Router:
    """Routes between devices: direct over a shared broker, or through the best relay."""

    def __init__(self, fleet: Fleet, relay_ok: BoolArray) -> None:
        self.fleet = fleet
        code = fleet.code
        self.has_m: BoolArray = (code & MQTT) != 0
        self.has_n: BoolArray = (code & NATS) != 0
        self.only_m: BoolArray = self.has_m & ~self.has_n
        self.only_n: BoolArray = self.has_n & ~self.has_m
        self.relay_ok = relay_ok  # online, runs core.relay
        self.relays: IntArray = np.flatnonzero(relay_ok & self.has_m & self.has_n)
        self._cache: dict[tuple[int, int, int], tuple[int, float]] = {}
        # routable[c1][c2]: a device reaching brokers c1 can send to one reaching c2
        self.routable = np.zeros((4, 4), dtype=np.bool_)
        for c1 in range(1, 4):
            for c2 in range(1, 4):
                self.routable[c1, c2] = bool(c1 & c2) or len(self.relays) > 0

    def relay_cost(self, b1: int, b2: int, nbytes: int) -> tuple[int, float]:
        """(device, added latency) of the best relay between brokers b1 and b2 (-1, inf if none)."""
        key = (b1, b2, nbytes)
        got = self._cache.get(key)
        if got is None:
            r = self.relays
            if len(r) == 0:
                got = (-1, float("inf"))
            else:
                f = self.fleet
                cost = _ow(f, b1)[r] + _ow(f, b2)[r] + PROC_MS + 2 * nbytes * f.serf[r]
                k = int(np.argmin(cost))
                got = (int(r[k]), float(cost[k]))
            self._cache[key] = got
        return got

    def hops(self, a: int, idx: IntArray | slice, nbytes: int, *, relays: bool = True) -> FloatArray:
        """Latency of a channel from device ``a`` to each device of ``idx`` (inf: no route;
        ``relays=False``: no relay has room); symmetric, so also from each of ``idx`` to ``a``."""
        f = self.fleet
        ca = int(f.code[a])
        has_n = self.has_n[idx]
        res: FloatArray = np.full(has_n.shape[0], np.inf)
        if ca & NATS:
            res = np.where(has_n, f.ow_nats[a] + f.ow_nats[idx], res)
        if ca & MQTT:
            direct_m = self.has_m[idx] if not ca & NATS else self.only_m[idx]
            res = np.where(direct_m, f.ow_mqtt[a] + f.ow_mqtt[idx], res)
        if not relays:
            pass
        elif ca == MQTT:
            _, rc = self.relay_cost(MQTT, NATS, nbytes)
            if rc < np.inf:
                res = np.where(self.only_n[idx], f.ow_mqtt[a] + rc + f.ow_nats[idx], res)
        elif ca == NATS:
            _, rc = self.relay_cost(NATS, MQTT, nbytes)
            if rc < np.inf:
                res = np.where(self.only_m[idx], f.ow_nats[a] + rc + f.ow_mqtt[idx], res)
        out: FloatArray = res + nbytes * (f.serf[a] + f.serf[idx])
        return out

    def hops_self(self, idx: IntArray | slice, nbytes: int) -> FloatArray:
        """Latency of a channel between two tasks on the same device, for each of ``idx``."""
        f = self.fleet
        one: FloatArray = np.where(self.has_n[idx], f.ow_nats[idx], f.ow_mqtt[idx])
        return 2 * one + 2 * nbytes * f.serf[idx]

    def hop(self, a: int, b: int, nbytes: int) -> float:
        return float(self.hops(a, np.array([b], dtype=np.int64), nbytes)[0])

    def codes_routable_from(self, codes: set[int]) -> BoolArray:
        """For each broker code: can it reach at least one device with one of ``codes``?
        (No codes at all: that neighbour cannot be placed anywhere, and says so itself.)"""
        if not codes:
            return np.ones(4, dtype=np.bool_)
        out = np.zeros(4, dtype=np.bool_)
        for c in codes:
            out |= self.routable[:, c]
        return out


def _ow(fleet: Fleet, broker: int) -> FloatArray:
    return fleet.ow_nats if broker == NATS else fleet.ow_mqtt


def _edge_name(spec: DataflowSpec, k: int) -> str:
    e = spec.edges[k]
    return f"edge {e.from_}→{e.to} (edges[{k}])"


def route_error(spec: DataflowSpec, k: int, fleet: Fleet, a: int, b: int, why: str) -> RouteError:
    """``edge gen→sink (edges[0]): edge-1 reaches only mqtt, cloud-1 only nats, and <why>``."""
    ida, idb = fleet.devices[a].id, fleet.devices[b].id
    ra, rb = _reach(int(fleet.code[a])), _reach(int(fleet.code[b]))
    second = f"{idb} {rb}" if rb.startswith("only ") else f"{idb} reaches {rb}"
    return RouteError(f"{_edge_name(spec, k)}: {ida} reaches {ra}, {second}, and {why}", edge=k)


def static_route_error(
    spec: DataflowSpec, k: int, fleet: Fleet, router: Router, from_idx: IntArray, to_idx: IntArray
) -> RouteError | None:
    """A ``RouteError`` if no device the producer may run on can reach any the consumer may
    run on (relays included, their capacity aside): the edge cannot be connected anywhere."""
    if len(from_idx) == 0 or len(to_idx) == 0:
        return None  # the task itself cannot be placed: reported as such
    cu = {int(c) for c in np.unique(fleet.code[from_idx])}
    cv = {int(c) for c in np.unique(fleet.code[to_idx])}
    if any(router.routable[a, b] for a in cu for b in cv):
        return None
    e = spec.edges[k]
    why = "no online device reaches both" if 0 not in cu | cv else "a device without a broker has no channel"
    if len(from_idx) == 1 and len(to_idx) == 1:
        err = route_error(spec, k, fleet, int(from_idx[0]), int(to_idx[0]), why)
        err.pinned = True
        return err
    du = " or ".join(sorted({_reach(c) for c in cu}))
    dv = " or ".join(sorted({_reach(c) for c in cv}))
    return RouteError(
        f"{_edge_name(spec, k)}: the devices {e.from_} may run on reach {du}, those {e.to} may run on "
        f"{dv}, and {why}",
        edge=k,
        pinned=True,
    )


@dataclass
class Selection:
    channels: list[ChannelSpec]
    relays: list[RelayPlacement]
    hop_ms: list[float]  # by edge index
    traffic: FloatArray  # Mbit/s through every uplink, relays included


def select(
    dataflow_id: str,
    spec: DataflowSpec,
    router: Router,
    edges: Sequence[tuple[int, int]],
    edge_bytes: Sequence[int],
    edge_mbps: Sequence[float],
    dev_of: Sequence[int],
    ledger: Ledger,
    names: Names,
) -> Selection:
    """The channel (or relay and two legs) of every edge; relays take capacity from ``ledger``."""
    fleet = router.fleet
    channels: list[ChannelSpec] = []
    relays: list[RelayPlacement] = []
    hop_ms: list[float] = []
    traffic = ledger.traffic.copy()
    for k, (u, v) in enumerate(edges):
        a, b = dev_of[u], dev_of[v]
        fu, fv = spec.tasks[u].id, spec.tasks[v].id
        ida, idb = fleet.devices[a].id, fleet.devices[b].id
        common = int(fleet.code[a]) & int(fleet.code[b])
        nbytes = edge_bytes[k]
        if common:
            broker = NATS if common & NATS else MQTT
            channels.append(_channel(dataflow_id, names, fu, fv, broker, _direct_reason(fleet, a, b, broker)))
            hop_ms.append(router.hop(a, b, nbytes))
            continue
        ca, cb = int(fleet.code[a]), int(fleet.code[b])
        if not ca or not cb:
            raise route_error(spec, k, fleet, a, b, "a device without a broker has no channel")
        b1, b2 = relay_brokers(fleet, a, b)
        r = best_relay(router, ledger, b1, b2, nbytes)
        if r < 0:
            why = (
                "no online device reaches both"
                if len(router.relays) == 0
                else f"no device that reaches both has {RELAY_CPU:g} CPU and {RELAY_MEM_MB:g} MiB free"
            )
            raise route_error(spec, k, fleet, a, b, why)
        rid = relay_id(spec, k)
        idr = fleet.devices[r].id
        ledger.take(r, RELAY_CPU, RELAY_MEM_MB)
        traffic[r] += 2 * edge_mbps[k]
        n1, n2 = BROKER_NAMES[b1], BROKER_NAMES[b2]
        extra = float(_ow(fleet, b1)[r] + _ow(fleet, b2)[r] + 2 * nbytes * fleet.serf[r]) + PROC_MS
        relays.append(
            RelayPlacement(
                id=rid,
                device=idr,
                from_task=fu,
                to_task=fv,
                reason=f"{ida} reaches {_reach(ca)}, {idb} {_reach(cb)}: {idr} reaches both "
                f"and is the cheapest relay (+{extra:.2f} ms)",
            )
        )
        leg = f"leg of {fu}→{fv} relayed by {idr}"
        channels.append(_channel(dataflow_id, names, fu, rid, b1, f"{leg}: {ida} and {idr} reach {n1}"))
        channels.append(_channel(dataflow_id, names, rid, fv, b2, f"{leg}: {idr} and {idb} reach {n2}"))
        f = fleet
        hop_ms.append(float(_ow(f, b1)[a] + _ow(f, b2)[b] + nbytes * (f.serf[a] + f.serf[b])) + extra)
    return Selection(channels, relays, hop_ms, traffic)


def relay_room(router: Router, ledger: Ledger) -> bool:
    r = router.relays
    return bool(((ledger.free_cpu[r] + EPS >= RELAY_CPU) & (ledger.free_mem[r] + EPS >= RELAY_MEM_MB)).any())


def needs_relay(fleet: Fleet, a: int, b: int) -> bool:
    return not int(fleet.code[a]) & int(fleet.code[b])


def relay_brokers(fleet: Fleet, a: int, b: int) -> tuple[int, int]:
    ca, cb = int(fleet.code[a]), int(fleet.code[b])
    return (NATS if ca & NATS else MQTT), (NATS if cb & NATS else MQTT)


def best_relay(router: Router, ledger: Ledger, b1: int, b2: int, nbytes: int) -> int:
    r = router.relays
    if len(r) == 0:
        return -1
    f = router.fleet
    ok = (ledger.free_cpu[r] + EPS >= RELAY_CPU) & (ledger.free_mem[r] + EPS >= RELAY_MEM_MB)
    if not ok.any():
        return -1
    cost = np.where(ok, _ow(f, b1)[r] + _ow(f, b2)[r] + 2 * nbytes * f.serf[r], np.inf)
    return int(r[int(np.argmin(cost))])


def _channel(df: str, names: Names, fu: str, fv: str, broker: int, reason: str) -> ChannelSpec:
    if broker == NATS:
        return ChannelSpec(
            from_task=fu, to_task=fv, transport="nats", topic=names.data_subject(df, fu, fv), reason=reason
        )
    return ChannelSpec(
        from_task=fu, to_task=fv, transport="mqtt", topic=names.data_topic(df, fu, fv), reason=reason
    )


def _direct_reason(fleet: Fleet, a: int, b: int, broker: int) -> str:
    ida, idb = fleet.devices[a].id, fleet.devices[b].id
    if broker == NATS:
        if a == b:
            return f"same device; {ida} reaches NATS (JetStream), durable if either task moves"
        return f"{ida} and {idb} both reach NATS (JetStream)"
    if a == b:
        return "same device; MQTT keeps the channel durable if either task moves"
    only = [d for d, i in ((ida, a), (idb, b)) if int(fleet.code[i]) & NATS]
    tail = f" ({only[0]} alone reaches NATS)" if len(only) == 1 else ""
    return f"{ida} and {idb} share the MQTT broker{tail}"
