"""Least-privilege JetStream permissions for a device logged in through the auth callout.

On a real nats-server (``nats_auth_server.py``): a work-queue stream, a KV bucket and an
object store, used within the grant and refused outside it.
"""

from __future__ import annotations

import asyncio
import secrets
import time

import nats.errors
import pytest
from nats.js.api import AckPolicy, ConsumerConfig, KeyValueConfig, RetentionPolicy, StreamConfig

from echo_shared.natsauth import (
    AuthCallout,
    NatsPermissions,
    js_consumer_permissions,
    js_publish_permissions,
    js_stream_permissions,
    kv_permissions,
    object_store_permissions,
)
from tests.harness.waiting import eventually
from tests.integration.nats_auth_server import DEVICE_INBOX, Devices, Server, violated

# ------------------------------------------------------------------ JetStream, least privilege


NS = "t1"
STREAM, BUCKET, STORE = "T1_DATA", "T1_PROGRESS", "T1_STATE"
MY_SUBJECT, OTHER_SUBJECT = "t1.df.f.a.b", "t1.df.f.a.c"
MY_CONSUMER, OTHER_CONSUMER = "t1-f-b-from-a", "t1-f-c-from-a"
MY_KEY, OTHER_KEY = "f.a.b", "f.a.c"


def device_js_permissions(*, write_objects: bool) -> NatsPermissions:
    inbox = DEVICE_INBOX
    return NatsPermissions.union(
        js_publish_permissions([MY_SUBJECT], inbox=inbox),
        js_stream_permissions(STREAM, inbox=inbox),
        js_consumer_permissions(STREAM, MY_CONSUMER, MY_SUBJECT, delete=True, inbox=inbox),
        kv_permissions(BUCKET, [MY_KEY], read=True, write=True, watch=True, inbox=inbox),
        object_store_permissions(STORE, read=True, write=write_objects, inbox=inbox),
    )


async def test_jetstream_with_least_privilege(server: Server, devices: Devices, callout: AuthCallout) -> None:
    admin = await server.login("admin")
    ajs = admin.jetstream(timeout=5)
    await ajs.add_stream(
        StreamConfig(name=STREAM, subjects=[f"{NS}.df.>"], retention=RetentionPolicy.WORK_QUEUE)
    )
    akv = await ajs.create_key_value(KeyValueConfig(bucket=BUCKET, history=1, direct=True))
    await akv.put(MY_KEY, b"p0")
    await akv.put(OTHER_KEY, b"secret")
    store = await ajs.create_object_store(STORE)
    snapshot = secrets.token_bytes(3_000_000)  # enough chunks for the server to ask for flow control
    await store.put("snap-1", snapshot)
    await ajs.add_consumer(
        STREAM, ConsumerConfig(durable_name=OTHER_CONSUMER, name=OTHER_CONSUMER, filter_subject=OTHER_SUBJECT)
    )
    await ajs.publish(OTHER_SUBJECT, b"not yours", stream=STREAM)

    password = secrets.token_urlsafe(16)
    devices.entries["dev-1"] = (password, device_js_permissions(write_objects=True))
    devices.entries["dev-ro"] = (password, device_js_permissions(write_objects=False))
    errors: list[str] = []
    dev = await server.connect("dev-1", password, errors=errors, inbox=DEVICE_INBOX)
    js = dev.jetstream(timeout=5)

    # the data path: publish into the work queue, pull with the task's durable consumer, ack
    ack = await js.publish(MY_SUBJECT, b"r1", stream=STREAM)
    assert ack.stream == STREAM
    await js.stream_info(STREAM)
    sub = await js.pull_subscribe(
        MY_SUBJECT,
        durable=MY_CONSUMER,
        stream=STREAM,
        config=ConsumerConfig(ack_policy=AckPolicy.EXPLICIT, ack_wait=60, filter_subject=MY_SUBJECT),
    )
    [msg] = await sub.fetch(1, timeout=5)
    assert msg.data == b"r1"
    await msg.ack_sync(timeout=5)
    again = await js.pull_subscribe(MY_SUBJECT, durable=MY_CONSUMER, stream=STREAM)  # exists: info only
    await js.publish(MY_SUBJECT, b"r2", stream=STREAM)
    [msg] = await again.fetch(1, timeout=5)
    await msg.nak()
    [msg] = await again.fetch(1, timeout=5)
    assert msg.data == b"r2"
    await msg.ack_sync(timeout=5)

    assert (await ajs.consumer_info(STREAM, MY_CONSUMER)).num_ack_pending == 0

    # progress: put, get, watch a key of the bucket
    kv = await js.key_value(BUCKET)
    await kv.put(MY_KEY, b"p1")
    assert (await kv.get(MY_KEY)).value == b"p1"
    watcher = await kv.watch(MY_KEY)
    first = await watcher.updates(timeout=5)
    assert first is not None and first.value == b"p1"
    await akv.put(MY_KEY, b"p2")
    seen = None
    deadline = time.monotonic() + 5
    while seen is None or seen.value != b"p2":
        assert time.monotonic() < deadline, "the watch missed the update"
        seen = await watcher.updates(timeout=5)
    await watcher.stop()
    await kv.delete(MY_KEY)

    # state: read the snapshot the master wrote, write one back
    obj = await js.object_store(STORE)
    assert (await asyncio.wait_for(obj.get("snap-1"), 10)).data == snapshot  # stalls without $JS.FC
    await obj.put("snap-2", b"from the device")
    await obj.put("snap-2", b"from the device, again")  # a replacement purges old chunks
    assert (await store.get("snap-2")).data == b"from the device, again"
    assert not errors, errors  # all of that within the granted subjects

    # everything else is refused
    quick = dev.jetstream(timeout=0.5)
    with pytest.raises(nats.errors.TimeoutError):
        await quick.pull_subscribe(OTHER_SUBJECT, durable=OTHER_CONSUMER, stream=STREAM)
    assert violated(errors, "publish", f"$JS.API.CONSUMER.INFO.{STREAM}.{OTHER_CONSUMER}")
    stolen = await quick.pull_subscribe_bind(OTHER_CONSUMER, stream=STREAM)
    with pytest.raises(nats.errors.TimeoutError):
        await stolen.fetch(1, timeout=0.5)
    await eventually(
        lambda: violated(errors, "publish", f"$JS.API.CONSUMER.MSG.NEXT.{STREAM}.{OTHER_CONSUMER}"),
        what="fetch from another consumer refused",
    )
    with pytest.raises(nats.errors.TimeoutError):
        await quick.pull_subscribe(
            OTHER_SUBJECT,
            durable="t1-mine-too",
            stream=STREAM,
            config=ConsumerConfig(filter_subject=OTHER_SUBJECT),
        )
    with pytest.raises(nats.errors.TimeoutError):
        await quick.publish(OTHER_SUBJECT, b"x", stream=STREAM)
    assert violated(errors, "publish", OTHER_SUBJECT)
    qkv = await quick.key_value(BUCKET)
    with pytest.raises(nats.errors.TimeoutError):
        await qkv.get(OTHER_KEY)
    with pytest.raises(nats.errors.TimeoutError):
        await qkv.put(OTHER_KEY, b"overwrite")
    assert (await akv.get(OTHER_KEY)).value == b"secret"
    with pytest.raises(nats.errors.TimeoutError):
        await quick.delete_consumer(STREAM, OTHER_CONSUMER)
    with pytest.raises(nats.errors.TimeoutError):
        await quick.add_stream(StreamConfig(name="T1_MINE", subjects=["t1.mine.>"]))
    assert (await ajs.consumer_info(STREAM, OTHER_CONSUMER)).num_pending == 1

    # the durable consumer may be deleted by its task when it goes for good
    assert await js.delete_consumer(STREAM, MY_CONSUMER)

    # a device granted read-only state cannot write it
    ro_errors: list[str] = []
    ro = await server.connect("dev-ro", password, errors=ro_errors, inbox=DEVICE_INBOX)
    ro_obj = await ro.jetstream(timeout=0.5).object_store(STORE)
    assert (await asyncio.wait_for(ro_obj.get("snap-1"), 10)).data == snapshot
    with pytest.raises(nats.errors.TimeoutError):
        await ro_obj.put("snap-3", b"x")
    await eventually(lambda: any("$o.t1_state." in e for e in ro_errors), what="object write refused")
