"""A small synchronous client of the ECHO REST API (``/api/v1``), on httpx.

Every failure is turned into a typed error (``ApiUnreachable``, ``TlsFailure``,
``NotFound``, ``Refused`` for 401/403, ``ApiError``) whose ``str()`` is a one-line message
for the user, so the CLI never shows a traceback. ``token`` goes in ``Authorization:
Bearer``; ``ca_file`` is the CA that signed an HTTPS API's certificate. Methods return
the ``httpx.Response`` so callers can print the API's JSON exactly as it came
(``-o json``) or decode it for tables.
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx

from echo_shared.urls import split_urls

DEFAULT_API_URL = "http://127.0.0.1:8099"
YAML_SUFFIXES = (".yaml", ".yml")


class CliError(Exception):
    """An error the CLI reports as one line (plus optional detail lines) and exit code 1."""

    def details(self) -> list[str]:
        return []


class ApiUnreachable(CliError):
    def __init__(self, url: str, cause: str) -> None:
        super().__init__(
            f"cannot reach the ECHO API at {url} ({cause}); start one with `echoctl dev up`, "
            "or `source .echo/dev.env` / set ECHO_API_URL or --api-url to point at a running one"
        )
        self.url = url


class TlsFailure(CliError):
    def __init__(self, url: str, cause: str) -> None:
        super().__init__(
            f"cannot verify the ECHO API at {url} over HTTPS ({cause}); "
            "set ECHO_CA_FILE or --ca-file to the CA certificate that signed it"
        )
        self.url = url


class NotFound(CliError):
    def __init__(self, kind: str, ident: str) -> None:
        super().__init__(f"no {kind} {ident}")
        self.kind = kind
        self.ident = ident


@dataclass
class ApiError(CliError):
    """The API answered with an error status; ``errors`` are its located problems."""

    status: int
    detail: str
    errors: list[dict[str, Any]] = field(default_factory=list)

    def __post_init__(self) -> None:
        Exception.__init__(self, f"{self.detail} (HTTP {self.status})")

    def details(self) -> list[str]:
        out = []
        for e in self.errors:
            loc = e.get("loc") or "body"
            out.append(f"{loc}: {e.get('msg', '')}")
        return out


class Refused(ApiError):
    """401 (no token, or one the API does not accept) or 403 (the token's role is too low)."""

    def __post_init__(self) -> None:
        if self.status == 403:
            message = f"not allowed: {self.detail}"
        else:
            message = f"the API refused the token: {self.detail} (set ECHO_TOKEN or --token)"
        Exception.__init__(self, message)


def content_type_for(path: str) -> str:
    """``application/yaml`` for .yaml/.yml files and stdin (``-``), JSON otherwise."""
    if path == "-" or Path(path).suffix.lower() in YAML_SUFFIXES:
        return "application/yaml"
    return "application/json"


def _error_from(resp: httpx.Response) -> ApiError:
    detail, errors = "", []
    try:
        body = resp.json()
    except ValueError:
        body = None
    if isinstance(body, dict):
        raw = body.get("detail", "")
        if isinstance(raw, str):
            detail = raw
        elif isinstance(raw, list):  # FastAPI's default shape, in case a route bypasses the handler
            errors = [e for e in raw if isinstance(e, dict)]
        items = body.get("errors")
        if isinstance(items, list):
            errors = [e for e in items if isinstance(e, dict)]
    if not detail:
        detail = resp.reason_phrase or "request failed"
        if body is None and resp.text.strip():
            detail = f"{detail}: {resp.text.strip()[:200]}"
    if resp.status_code in (401, 403):
        return Refused(resp.status_code, detail, errors)
    return ApiError(resp.status_code, detail, errors)


def _connect_cause(e: httpx.TransportError) -> str:
    """Why a connection was not made, for ``ApiUnreachable``."""
    if isinstance(e, httpx.ConnectTimeout):
        return f"no connection within the timeout: {type(e).__name__}"
    return "connection refused" if "refused" in str(e).lower() else str(e) or type(e).__name__


def _path(collection: str, ident: str) -> str:
    return f"/api/v1/{collection}/{quote(ident, safe='')}"


def tls_context(ca_file: str) -> ssl.SSLContext:
    """Verify the API's certificate against ``ca_file`` (PEM)."""
    try:
        return ssl.create_default_context(cafile=ca_file)
    except (OSError, ssl.SSLError) as e:
        raise CliError(f"cannot use the CA file {ca_file}: {e.strerror or e}") from e


class EchoClient:
    """``EchoClient(url, token=..., ca_file=...)``; pass ``transport`` (e.g.
    ``httpx.MockTransport``) in tests.

    ``url`` may list several master replicas, comma-separated (any of them serves the API):
    a request that cannot connect to one (refused, or no connection within the timeout: a
    host down or cut off) goes to the next (it never reached a server, so even a POST is safe
    to send again); the one that answered is tried first from then on. A timeout once
    connected (the request may have been served) is not retried.
    """

    def __init__(
        self,
        base_url: str,
        *,
        token: str | None = None,
        ca_file: str | None = None,
        timeout: float = 15.0,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self.urls = [u.rstrip("/") for u in split_urls(base_url)] or [DEFAULT_API_URL]
        self.token = token or None
        self.ca_file = ca_file or None
        headers = {"Authorization": f"Bearer {self.token}"} if self.token else None
        verify: ssl.SSLContext | bool = tls_context(self.ca_file) if self.ca_file else True
        self._http = httpx.Client(timeout=timeout, transport=transport, headers=headers, verify=verify)

    @property
    def base_url(self) -> str:
        """The API replica requests go to first."""
        return self.urls[0]

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> EchoClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------ plumbing

    def request(
        self,
        method: str,
        path: str,
        *,
        not_found: tuple[str, str] | None = None,
        ok: tuple[int, ...] = (200,),
        **kwargs: Any,
    ) -> httpx.Response:
        for i, url in enumerate(list(self.urls)):
            try:
                resp = self._http.request(method, url + path, **kwargs)
            except (httpx.ConnectError, httpx.ConnectTimeout) as e:  # it never reached a server
                tls = "CERTIFICATE_VERIFY_FAILED" in str(e) or "SSL" in str(e)
                if tls and isinstance(e, httpx.ConnectError):
                    raise TlsFailure(url, str(e)) from e
                if i + 1 < len(self.urls):
                    continue  # the next replica
                raise ApiUnreachable(", ".join(self.urls), _connect_cause(e)) from e
            except httpx.TimeoutException as e:
                raise ApiUnreachable(url, f"no answer: {type(e).__name__}") from e
            except httpx.HTTPError as e:
                raise ApiUnreachable(url, str(e) or type(e).__name__) from e
            if i:
                self.urls.insert(0, self.urls.pop(i))
            return self._checked(resp, not_found, ok)
        raise AssertionError("unreachable")  # the loop returns or raises

    @staticmethod
    def _checked(
        resp: httpx.Response, not_found: tuple[str, str] | None, ok: tuple[int, ...]
    ) -> httpx.Response:
        if resp.status_code == 404 and not_found is not None:
            raise NotFound(*not_found)
        if resp.status_code not in ok:
            raise _error_from(resp)
        return resp

    # ------------------------------------------------------------------ dataflows

    def submit(self, body: bytes, content_type: str) -> httpx.Response:
        return self.request(
            "POST", "/api/v1/dataflows", content=body, headers={"Content-Type": content_type}, ok=(200, 201)
        )

    def list_dataflows(self) -> httpx.Response:
        return self.request("GET", "/api/v1/dataflows")

    def get_dataflow(self, df_id: str) -> httpx.Response:
        return self.request("GET", _path("dataflows", df_id), not_found=("dataflow", df_id))

    def stop_dataflow(self, df_id: str) -> httpx.Response:
        # DELETE waits (server side) for the stop to finish, up to the master's stop_wait
        return self.request("DELETE", _path("dataflows", df_id), not_found=("dataflow", df_id), ok=(200, 202))

    # ------------------------------------------------------------------ devices

    def list_devices(self) -> httpx.Response:
        return self.request("GET", "/api/v1/devices")

    def get_device(self, device_id: str) -> httpx.Response:
        return self.request("GET", _path("devices", device_id), not_found=("device", device_id))

    # ------------------------------------------------------------------ migrations

    def migrate(self, df_id: str, task: str, device: str | None) -> httpx.Response:
        path = f"{_path('dataflows', df_id)}/tasks/{quote(task, safe='')}/migrate"
        body = {"device": device} if device else {}
        return self.request("POST", path, json=body, ok=(202,))

    def rebalance(self, df_id: str) -> httpx.Response:
        return self.request("POST", f"{_path('dataflows', df_id)}/rebalance", ok=(202,))

    def get_migration(self, mid: str) -> httpx.Response:
        return self.request("GET", _path("migrations", mid), not_found=("migration", mid))

    def list_migrations(self, df_id: str | None = None) -> httpx.Response:
        return self.request("GET", "/api/v1/migrations", params={"dataflow": df_id} if df_id else None)

    def decisions(self) -> httpx.Response:
        return self.request("GET", "/api/v1/rebalancing/decisions")

    def events(
        self,
        *,
        dataflow: str | None = None,
        device: str | None = None,
        since: str | None = None,
        after: str | None = None,
        limit: int = 100,
    ) -> httpx.Response:
        params: dict[str, Any] = {"limit": limit}
        for k, v in (("device", device), ("since", since), ("after", after)):
            if v is not None:
                params[k] = v
        if dataflow is not None:
            path = f"{_path('dataflows', dataflow)}/events"
            return self.request("GET", path, params=params, not_found=("dataflow", dataflow))
        return self.request("GET", "/api/v1/events", params=params)

    def console_code(self, dataflow: str | None = None) -> httpx.Response:
        """A one-time console login code for this client's token (``{code, expires_in, path}``)."""
        params = {"dataflow": dataflow} if dataflow else None
        not_found = ("dataflow", dataflow) if dataflow else None
        return self.request("POST", "/api/v1/console/codes", params=params, ok=(201,), not_found=not_found)

    # ------------------------------------------------------------------ tokens and audit

    def create_token(self, role: str, ttl: str | None = None, name: str | None = None) -> httpx.Response:
        body: dict[str, Any] = {"role": role}
        if ttl is not None:
            body["ttl"] = ttl
        if name:
            body["name"] = name
        return self.request("POST", "/api/v1/tokens", json=body, ok=(201,))

    def list_tokens(self) -> httpx.Response:
        return self.request("GET", "/api/v1/tokens")

    def revoke_token(self, token_id: str) -> httpx.Response:
        return self.request("DELETE", _path("tokens", token_id), not_found=("token", token_id))

    def audit(self, limit: int = 100, since: str | None = None) -> httpx.Response:
        params: dict[str, Any] = {"limit": limit}
        if since:
            params["since"] = since
        return self.request("GET", "/api/v1/audit", params=params)
