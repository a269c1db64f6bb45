"""The console's place in the access rule and its redirect guard."""

from __future__ import annotations

import pytest

from echo_master.auth import AccessRules, session_cookie
from echo_master.console.live import parse_topics
from echo_master.console.pages import safe_next
from echo_master.tokens import Role
from echo_shared.errors import SpecError


def test_console_pages_are_public_and_codes_need_a_viewer() -> None:
    rules = AccessRules()
    assert rules.required("GET", "/ui/") is None
    assert rules.required("POST", "/ui/login") is None
    assert rules.required("GET", "/ui/dataflows/df-1") is None
    assert rules.required("GET", "/uix") is Role.viewer  # a prefix is a path segment
    assert rules.required("POST", "/api/v1/console/codes") is Role.viewer
    assert rules.required("GET", "/api/v1/live") is Role.viewer
    assert rules.required("POST", "/api/v1/specs/validate") is Role.operator


@pytest.mark.parametrize(
    ("given", "lands"),
    [
        ("/ui/dataflows/df-1", "/ui/dataflows/df-1"),
        ("/ui/devices?x=1", "/ui/devices?x=1"),
        (None, "/ui/"),
        ("https://evil.example/ui/", "/ui/"),
        ("//evil.example/ui/", "/ui/"),
        ("/ui/../api/v1/tokens", "/ui/"),
        ("/api/v1/tokens", "/ui/"),
        ("/ui/\\evil", "/ui/"),
    ],
)
def test_login_lands_on_console_pages_only(given: str | None, lands: str) -> None:
    assert safe_next(given) == lands


def test_cookie_only_without_a_bearer_header() -> None:
    cookie = (b"cookie", b"a=b; echo_console=s3cret")
    assert session_cookie({"headers": [cookie]}) == "s3cret"
    assert session_cookie({"headers": [cookie, (b"authorization", b"Bearer x")]}) is None
    assert session_cookie({"headers": [(b"cookie", b"a=b")]}) is None


def test_live_topics() -> None:
    assert parse_topics("devices, dataflow:df-1") == ({"devices"}, "df-1")
    for bad in ("", "nope", "dataflow:"):
        with pytest.raises(SpecError) as e:
            parse_topics(bad)
        assert e.value.problems[0].loc == "query.topics"
