"""One comma-separated list of URLs, read the same way everywhere (``ECHO_API_URL``,
``ECHO_NATS_URL``)."""

from __future__ import annotations

from echo_shared.nats_bus import nats_servers
from echo_shared.urls import split_urls


def test_split_urls_strips_drops_empties_and_keeps_order() -> None:
    assert split_urls("http://b:1, http://a:2 ,,  ,http://c:3/") == [
        "http://b:1",
        "http://a:2",
        "http://c:3/",
    ]
    assert split_urls("http://only:1") == ["http://only:1"]
    assert split_urls("") == [] and split_urls(" , ") == []


def test_nats_servers_is_split_urls() -> None:
    assert nats_servers("nats://x:1, nats://x:2,,nats://x:3 ") == ["nats://x:1", "nats://x:2", "nats://x:3"]
    assert nats_servers("nats://x:1") == ["nats://x:1"]
