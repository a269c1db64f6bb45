"""Lists of URLs in one setting: ``ECHO_API_URL`` (the master replicas), ``ECHO_NATS_URL``
(the nodes of a NATS cluster) may name several, comma-separated.

Imports nothing: the agent loads it at start (its import footprint is tested).
"""

from __future__ import annotations


def split_urls(text: str) -> list[str]:
    """The URLs of a comma-separated list, in order: each stripped, empty entries dropped."""
    return [u.strip() for u in text.split(",") if u.strip()]


def redacted(url: str) -> str:
    """``url`` without a login (``user:password@``) and query, fit for a log line or an error."""
    scheme, sep, rest = url.partition("://")
    if not sep:
        scheme, rest = "", url
    rest = rest.split("?", 1)[0].split("#", 1)[0]
    host, at, tail = rest.partition("/")
    host = host.rpartition("@")[2]
    return f"{scheme}{sep}{host}{at}{tail}"
