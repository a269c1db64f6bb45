"""``ECHO_REDIS_URL`` names one Redis or, for high availability, its sentinels."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from pydantic import ValidationError

from echo_shared import redis_store
from echo_shared.credentials import Access, is_tls_url
from echo_shared.redis_store import is_sentinel_url, sentinel_address
from echo_shared.settings import CommonSettings, NatsSettings, RedisSettings, ReplicaSettings


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


@pytest.mark.parametrize(
    "url",
    [
        "rediss+sentinel://echo:s3cret-pw@h1:26379,h2:26379/echo/0",
        "rediss+sentinel://h1:26379,echo:s3cret-pw@h2:26379/echo/0",
        "redis+sentinel://:s3cret-pw@h1:26379/echo/0",
        # a password with a "/" or "?" in it: the split puts pieces of it in the path or query
        "rediss+sentinel://echo:s3cret/pw@h1:26379/echo/0",
        "rediss+sentinel://echo:s3cret?pw@h1:26379/echo/0",
    ],
)
def test_a_login_in_a_sentinel_url_is_refused_and_never_shown(url: str) -> None:
    """The login comes from the credentials file: one in the URL is refused (not dropped
    silently), and neither the error nor the settings' ValidationError (what a service logs
    at start) shows the password, or any piece of it."""
    with pytest.raises(ValueError, match="credentials file") as e:
        sentinel_address(url)
    assert "s3cret" not in str(e.value) and "pw" not in str(e.value)
    with pytest.raises(ValidationError) as v:
        RedisSettings(redis_url=url)
    assert "credentials file" in str(v.value)
    assert "s3cret" not in str(v.value) and "pw" not in str(v.value)


class _Service(CommonSettings, NatsSettings, RedisSettings, ReplicaSettings):
    """Composed as the services' settings are (echo_master.settings...)."""


@pytest.mark.parametrize(
    "url",
    [
        "rediss+sentinel://h1:26379,h2:s3cret/echo/0",  # a bad port
        "rediss+sentinel://h1:26379/echo/s3cret",  # a bad db
    ],
)
def test_a_bad_redis_url_is_not_echoed_in_the_settings_error(url: str) -> None:
    """What is wrong is named (the offending part), the whole URL is not: the
    ValidationError of a service's settings holds no ``input_value``."""
    with pytest.raises(ValidationError) as v:
        _Service(nats_url="tls://n:4222", redis_url=url)
    text = str(v.value)
    assert "redis_url" in text and "input_value" not in text
    assert url not in text and "h1:26379" not in text


@pytest.mark.parametrize(
    "url", ["rediss://127.0.0.1:1/0", "rediss+sentinel://127.0.0.1:1,127.0.0.1:2/echo/0"]
)
def test_connections_of_a_tls_pool_share_one_tls_context(url: str, tmp_path: Path) -> None:
    """redis-py builds a TLS context per connection (loading the system CA store each time);
    ours share one per settings, and a rotated CA file gets a new one."""
    ca = tmp_path / "ca.pem"
    ca.write_text("not read until a connection is made")
    client = redis_store._client(url, 8, Access(redis_url=url, ca_file=ca))
    pool = client.connection_pool
    a, b = pool.make_connection(), pool.make_connection()
    assert a.ssl_context is b.ssl_context  # type: ignore[attr-defined]
    os.utime(ca, (1, 1))  # the file replaced
    c = pool.make_connection()
    assert c.ssl_context is not a.ssl_context  # type: ignore[attr-defined]
    assert c.ssl_context.ca_certs == str(ca)  # type: ignore[attr-defined]
