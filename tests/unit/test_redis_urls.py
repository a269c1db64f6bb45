"""``ECHO_REDIS_URL`` names one Redis or, for high availability, its sentinels."""

from __future__ import annotations

import pytest

from echo_shared.credentials import is_tls_url
from echo_shared.redis_store import is_sentinel_url, sentinel_address


def test_a_sentinel_url_lists_the_sentinels_the_primary_and_the_db() -> None:
    url = "rediss+sentinel://s1.example:26379, s2.example:26380,[::1]:26381/echo/3"
    assert is_sentinel_url(url) and is_tls_url(url)
    assert sentinel_address(url) == (
        [("s1.example", 26379), ("s2.example", 26380), ("::1", 26381)],
        "echo",
        3,
    )
    assert sentinel_address("redis+sentinel://h:1/mymaster")[1:] == ("mymaster", 0)
    assert not is_tls_url("redis+sentinel://h:1/echo/0")
    assert not is_sentinel_url("rediss://h:6379/0")


@pytest.mark.parametrize(
    ("url", "problem"),
    [
        ("redis+sentinel://h1:26379,h2/echo/0", "host:port"),
        ("redis+sentinel://h1:x/echo/0", "host:port"),
        ("redis+sentinel://h1:26379/", "/<primary name>"),
        ("redis+sentinel://h1:26379/echo/zero", "/<primary name>"),
        ("redis+sentinel://h1:26379/echo/0/1", "/<primary name>"),
    ],
)
def test_a_bad_sentinel_url_says_what_is_wrong(url: str, problem: str) -> None:
    with pytest.raises(ValueError, match=problem):
        sentinel_address(url)
