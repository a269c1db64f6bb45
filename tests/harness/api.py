"""A small synchronous client of the master's REST API for tests."""

from __future__ import annotations

from typing import Any

import httpx

from .waiting import wait_until


class DataflowFailed(Exception):
    """The dataflow reached ``failed`` while a test waited for another state (fails at once)."""


class Api:
    def __init__(self, base_url: str, token: str | None = None, verify: Any = True) -> None:
        self.base = base_url
        headers = {"Authorization": f"Bearer {token}"} if token else None
        self.http = httpx.Client(base_url=base_url, timeout=10, headers=headers, verify=verify)

    @classmethod
    def of(cls, platform: Any) -> Api:
        """An admin client of a running ``Platform`` (its token; its CA for HTTPS)."""
        return cls(platform.api_url, platform.admin_token, platform.api_verify)

    def close(self) -> None:
        self.http.close()

    def create_token(self, role: str, ttl: str | float | None = None, name: str = "") -> dict[str, Any]:
        """A new API token (needs an admin token): ``{"id", "token", "role", "expires"}``."""
        body: dict[str, Any] = {"role": role, "name": name}
        if ttl is not None:
            body["ttl"] = ttl
        r = self.http.post("/api/v1/tokens", json=body)
        assert r.status_code == 201, r.text
        out: dict[str, Any] = r.json()
        return out

    def submit(self, spec: dict[str, Any]) -> str:
        r = self.http.post("/api/v1/dataflows", json=spec)
        assert r.status_code == 201, r.text
        return str(r.json()["id"])

    def dataflow(self, df_id: str) -> dict[str, Any]:
        r = self.http.get(f"/api/v1/dataflows/{df_id}")
        assert r.status_code == 200, r.text
        out: dict[str, Any] = r.json()
        return out

    def devices(self) -> dict[str, dict[str, Any]]:
        r = self.http.get("/api/v1/devices")
        assert r.status_code == 200, r.text
        return {d["id"]: d for d in r.json()}

    def wait_state(self, df_id: str, *states: str, timeout: float = 30.0) -> dict[str, Any]:
        seen: list[str] = []

        def check() -> dict[str, Any] | None:
            df = self.dataflow(df_id)
            if not seen or seen[-1] != df["state"]:
                seen.append(df["state"])
            if df["state"] in states:
                return df
            if df["state"] == "failed":
                raise DataflowFailed(f"dataflow {df_id} failed: {df['reason']}")
            return None

        try:
            return wait_until(check, timeout=timeout, what=f"{df_id} in {states}")
        except AssertionError as e:
            raise AssertionError(f"{e} (states seen: {seen})") from None
