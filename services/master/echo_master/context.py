"""What the API's routes need: settings, names, stores, the reconciler, the links, and the
API's tokens and audit trail."""

from __future__ import annotations

from dataclasses import dataclass

import redis.asyncio as aioredis

from echo_shared.mqtt import MqttClient
from echo_shared.names import Names
from echo_shared.nats_bus import NatsBus

from .audit import AuditLog
from .metrics import MasterMetrics
from .reconciling import Reconciler
from .settings import MasterSettings
from .store import DataflowStore
from .tokens import TokenStore


@dataclass
class ApiContext:
    settings: MasterSettings
    names: Names
    store: DataflowStore
    reconciler: Reconciler
    bus: NatsBus
    redis: aioredis.Redis
    mqtt: MqttClient
    tokens: TokenStore
    audit: AuditLog
    metrics: MasterMetrics | None = None
