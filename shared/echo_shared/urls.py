"""Lists of URLs in one setting: ``ECHO_API_URL`` (the master replicas), ``ECHO_NATS_URL``
(the nodes of a NATS cluster) may name several, comma-separated.

Imports nothing: the agent loads it at start (its import footprint is tested).
"""

from __future__ import annotations


def split_urls(text: str) -> list[str]:
    """The URLs of a comma-separated list, in order: each stripped, empty entries dropped."""
    return [u.strip() for u in text.split(",") if u.strip()]
