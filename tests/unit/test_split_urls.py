"""One comma-separated list of URLs, read the same way everywhere (``ECHO_API_URL``,
``ECHO_NATS_URL``)."""

from __future__ import annotations

import pytest

from echo_shared.nats_bus import nats_servers
from echo_shared.urls import redacted, split_urls


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


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("rediss://echo-master:s3cr%2Ft@redis:6379/0", "rediss://redis:6379/0"),
        ("redis://:pw@h:1/0?password=x", "redis://h:1/0"),
        ("rediss+sentinel://a:1,b:2/echo/0", "rediss+sentinel://a:1,b:2/echo/0"),
        ("h:1", "h:1"),
    ],
)
def test_redacted_urls_carry_no_login(url: str, shown: str) -> None:
    assert redacted(url) == shown
