"""Topic and subject layout: per-device prefixes, safe parts, round trips."""

from __future__ import annotations

import pytest

from echo_shared.names import Names


def test_everything_a_device_touches_sits_under_its_prefix() -> None:
    n = Names("echo")
    prefix = n.device_prefix("edge-1")
    for topic in (
        n.hello_topic("edge-1"),
        n.heartbeat_topic("edge-1"),
        n.command_topic("edge-1"),
        n.ack_topic("edge-1"),
        n.status_topic("edge-1"),
        n.bye_topic("edge-1"),
    ):
        assert topic.startswith(prefix + "/")
        assert n.device_from_topic(topic) == "edge-1"


def test_namespaces_keep_platforms_apart() -> None:
    a, b = Names("a"), Names("b")
    assert a.command_topic("d") != b.command_topic("d")
    assert a.scheduler_place != b.scheduler_place
    assert a.dataflow_key("x") != b.dataflow_key("x")
    assert a.events_stream != b.events_stream


@pytest.mark.parametrize("bad", ["a/b", "a+b", "#", "a b", "", "a.b"])
def test_unsafe_parts_are_refused(bad: str) -> None:
    with pytest.raises(ValueError):
        Names().command_topic(bad)
    with pytest.raises(ValueError):
        Names().data_topic("df", bad, "x")


def test_wildcards_and_foreign_topics() -> None:
    n = Names("echo")
    assert n.any_device_topic("hb") == "echo/dev/+/hb"
    with pytest.raises(ValueError):
        n.any_device_topic("secrets")
    with pytest.raises(ValueError):
        n.device_from_topic("other/dev/x/hb")
