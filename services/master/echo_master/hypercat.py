"""The devices and dataflows as a HyperCat 3.0 catalogue (``GET /cat``), as the original
ECHO's resource directory served them.

A catalogue is ``{"catalogue-metadata": [rel/val...], "items": [{"href", "item-metadata":
[rel/val...]}]}``. Items:

- ``/api/v1/devices/<id>``: description, content type, and under ``urn:X-echo:rels:`` the
  kind (``device``), tier, status, each input stream, runtimes, CPU and memory capacity,
  labels (``label:<key>``);
- ``/api/v1/dataflows/<id>``: description, content type, and the kind (``dataflow``),
  name, state, desired state, reason (when set) and each task with its device
  (``task``: ``<task>@<device>``).

Queries (``urn:X-hypercat:search:simple`` and ``...:prefix``): ``href=`` (exact),
``prefix-href=`` (the href starts with it), ``rel=`` and ``val=`` (an item with a metadata
pair matching both given); several filters must all hold.

The building and filtering are pure functions; the route reads devices from the registry
over NATS and dataflows from the store.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from fastapi import APIRouter, Query

from echo_shared.models import DeviceRecord
from echo_shared.registry_client import list_devices

if TYPE_CHECKING:
    from .context import ApiContext
    from .store import Dataflow

CONTENT_TYPE = "application/vnd.hypercat.catalogue+json"
HC = "urn:X-hypercat:rels:"
ECHO = "urn:X-echo:rels:"
IS_CONTENT_TYPE = HC + "isContentType"
DESCRIPTION = HC + "hasDescription:en"
SUPPORTS_SEARCH = HC + "supportsSearch"

Pair = dict[str, str]
Item = dict[str, Any]


def pair(rel: str, val: object) -> Pair:
    return {"rel": rel, "val": str(val)}


def device_item(d: DeviceRecord) -> Item:
    meta = [
        pair(DESCRIPTION, f"ECHO device {d.id} ({d.tier.value} tier)"),
        pair(IS_CONTENT_TYPE, "application/json"),
        pair(ECHO + "kind", "device"),
        pair(ECHO + "tier", d.tier.value),
        pair(ECHO + "status", d.status.value),
        pair(ECHO + "cpu", f"{d.capacity.cpu:g}"),
        pair(ECHO + "memoryMb", d.capacity.memory_mb),
    ]
    meta += [pair(ECHO + "inputStream", s) for s in d.input_streams]
    meta += [pair(ECHO + "runtime", r) for r in d.runtimes]
    meta += [pair(f"{ECHO}label:{k}", v) for k, v in sorted(d.labels.items())]
    return {"href": f"/api/v1/devices/{d.id}", "item-metadata": meta}


def dataflow_item(df: Dataflow) -> Item:
    meta = [
        pair(DESCRIPTION, f"ECHO dataflow {df.name} ({len(df.spec.tasks)} tasks)"),
        pair(IS_CONTENT_TYPE, "application/json"),
        pair(ECHO + "kind", "dataflow"),
        pair(ECHO + "name", df.name),
        pair(ECHO + "state", df.state.value),
        pair(ECHO + "desired", df.desired.value),
    ]
    if df.reason:
        meta.append(pair(ECHO + "reason", df.reason))
    for t in df.spec.tasks:
        rec = df.tasks.get(t.id)
        device = rec.device if rec is not None and rec.device else "-"
        meta.append(pair(ECHO + "task", f"{t.id}@{device}"))
    return {"href": f"/api/v1/dataflows/{df.id}", "item-metadata": meta}


def catalogue(items: Iterable[Item], description: str = "ECHO devices and dataflows") -> dict[str, Any]:
    return {
        "catalogue-metadata": [
            pair(IS_CONTENT_TYPE, CONTENT_TYPE),
            pair(DESCRIPTION, description),
            pair(SUPPORTS_SEARCH, "urn:X-hypercat:search:simple"),
            pair(SUPPORTS_SEARCH, "urn:X-hypercat:search:prefix"),
        ],
        "items": list(items),
    }


def matches(
    item: Item,
    href: str | None = None,
    prefix: str | None = None,
    rel: str | None = None,
    val: str | None = None,
) -> bool:
    if href is not None and item["href"] != href:
        return False
    if prefix is not None and not item["href"].startswith(prefix):
        return False
    if rel is not None or val is not None:
        return any(
            (rel is None or m["rel"] == rel) and (val is None or m["val"] == val)
            for m in item["item-metadata"]
        )
    return True


def build(
    devices: Iterable[DeviceRecord],
    dataflows: Iterable[Dataflow],
    *,
    href: str | None = None,
    prefix: str | None = None,
    rel: str | None = None,
    val: str | None = None,
) -> dict[str, Any]:
    """The catalogue of these devices and dataflows, filtered by the query."""
    items = [device_item(d) for d in sorted(devices, key=lambda d: d.id)]
    items += [dataflow_item(df) for df in dataflows]
    return catalogue(i for i in items if matches(i, href, prefix, rel, val))


def hypercat_router(ctx: ApiContext) -> APIRouter:
    router = APIRouter(tags=["resource directory"])

    @router.get("/cat", summary="Devices and dataflows as a HyperCat 3.0 catalogue")
    async def cat(
        href: str | None = Query(default=None, description="only the item with exactly this href"),
        prefix_href: str | None = Query(
            default=None, alias="prefix-href", description="only items whose href starts with this"
        ),
        rel: str | None = Query(default=None, description="only items with a metadata pair of this rel"),
        val: str | None = Query(default=None, description="only items with a metadata pair of this val"),
    ) -> dict[str, Any]:
        wants_devices = may_match("/api/v1/devices/", href, prefix_href)
        wants_dataflows = may_match("/api/v1/dataflows/", href, prefix_href)
        devices: list[DeviceRecord] = []
        if wants_devices:
            devices = await list_devices(ctx.bus, ctx.names)
        dataflows = await ctx.store.all() if wants_dataflows else []
        return build(devices, dataflows, href=href, prefix=prefix_href, rel=rel, val=val)

    return router


def may_match(base: str, href: str | None, prefix: str | None) -> bool:
    """Whether items under ``base`` can pass the href filters (skips needless lookups)."""
    if href is not None and not href.startswith(base):
        return False
    return prefix is None or base.startswith(prefix) or prefix.startswith(base)
