"""The console's pages (``/ui/...``), its login, and the API calls only it needs.

Pages are the same shell (``static/index.html``) with the console's script; the script
reads the path and calls the REST API with the session cookie. Before serving a page the
master checks the session (none: to the login form, with ``next``) and that the dataflow or
device in the path exists (else a friendly 404 page). The login form takes an API token;
``/ui/login?code=`` takes a one-time code (``echoctl console``). Answers carry a strict
Content-Security-Policy: the console loads nothing but its own files.

API (in the OpenAPI document): ``POST /api/v1/console/codes`` (any role: a login code for
the caller's own token and role), ``GET /api/v1/console/session`` (the caller's role, the
session's CSRF secret, Grafana's address), ``POST /api/v1/specs/validate`` (a spec's problems
with their lines, without submitting it).
"""

from __future__ import annotations

import html
import logging
from importlib import resources
from pathlib import PurePosixPath
from urllib.parse import parse_qsl, quote

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from pydantic import BaseModel, Field

from echo_shared.errors import NotFoundError, SpecError
from echo_shared.messages import DeviceGetReply, DeviceGetRequest

from ..body_limit import read_body
from ..context import ApiContext
from ..errors import LoginRefused
from ..specs import locate, read_spec
from ..submitting import validate
from ..tokens import Principal
from ..views import ERRORS, SPEC_BODY, ErrorItem
from .sessions import CODE_SECONDS, COOKIE, ConsoleSessions, Session

log = logging.getLogger(__name__)

STATIC = resources.files(__package__) / "static"
ASSETS = {  # what /ui/static/ serves, and as what
    "console.js": "text/javascript; charset=utf-8",
    "dag.js": "text/javascript; charset=utf-8",
    "console.css": "text/css; charset=utf-8",
    "favicon.svg": "image/svg+xml",
}
SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",  # a login code in the URL never leaves in a Referer
    "Cache-Control": "no-store",
}


class LoginCode(BaseModel):
    code: str = Field(description="use once, within expires_in seconds, at /ui/login?code=")
    expires_in: float
    path: str = Field(description="the login URL's path and query, to append to the API's address")


class ConsoleSession(BaseModel):
    role: str
    token: str = Field(description="the id of the token the session acts for")
    csrf: str | None = Field(
        default=None, description="send as X-ECHO-CSRF with changing calls (cookie sessions)"
    )
    expires: float | None = None
    grafana_url: str | None = None


class SpecCheck(BaseModel):
    valid: bool
    errors: list[ErrorItem] = Field(default_factory=list)


def _asset(name: str) -> bytes:
    return (STATIC / name).read_bytes()


def safe_next(value: str | None) -> str:
    """Where to land after the login: a console path only (no open redirect)."""
    if not value or not value.startswith("/ui/") or value.startswith("//") or "\\" in value:
        return "/ui/"
    path = PurePosixPath(value.split("?", 1)[0])
    return value if ".." not in path.parts else "/ui/"


def page(body: str, *, title: str, status: int = 200) -> HTMLResponse:
    return HTMLResponse(
        _asset("index.html").decode().replace("{{title}}", html.escape(title)).replace("{{body}}", body),
        status_code=status,
        headers=SECURITY_HEADERS,
    )


def login_page(next_path: str, reason: str = "", status: int = 200) -> HTMLResponse:
    why = f'<p class="login-reason" role="alert">{html.escape(reason)}</p>' if reason else ""
    body = f"""<main class="login"><form method="post" action="/ui/login" class="card">
<h1>ECHO console</h1>{why}
<label for="token">API token</label>
<input id="token" name="token" type="password" autocomplete="off" required placeholder="echo_...">
<input type="hidden" name="next" value="{html.escape(next_path)}">
<button type="submit">Log in</button>
<p class="hint">Or run <code>echoctl console</code> for a one-time login link.</p>
</form></main>"""
    return page(body, title="Log in", status=status)


def not_found_page(what: str) -> HTMLResponse:
    body = f"""<main class="notfound"><div class="card"><h1>Not found</h1>
<p>{html.escape(what)}</p><p><a href="/ui/dataflows">Dataflows</a> · <a href="/ui/devices">Devices</a></p>
</div></main>"""
    return page(body, title="Not found", status=404)


def shell(title: str) -> HTMLResponse:
    return page('<div id="app" class="app" data-loading="1"></div>', title=title)


def session_cookie(
    response: Response, sid: str, session: Session, request: Request, clock_now: float
) -> None:
    response.set_cookie(
        COOKIE,
        sid,
        max_age=max(1, int(session.expires - clock_now)),
        path="/",
        httponly=True,
        samesite="strict",
        secure=request.url.scheme == "https",
    )


def console_router(ctx: ApiContext, sessions: ConsoleSessions) -> APIRouter:
    router = APIRouter(include_in_schema=False)

    async def current(request: Request) -> Session | None:
        sid = request.cookies.get(COOKIE)
        return await sessions.resolve(sid) if sid else None

    def to_login(request: Request) -> RedirectResponse:
        target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
        return RedirectResponse(f"/ui/login?next={quote(target, safe='/')}", status_code=303)

    def signed_in(request: Request, sid: str, session: Session, next_path: str) -> RedirectResponse:
        response = RedirectResponse(next_path, status_code=303)
        session_cookie(response, sid, session, request, sessions.clock())
        response.headers.update(SECURITY_HEADERS)
        return response

    @router.get("/ui")
    async def ui_root() -> RedirectResponse:
        return RedirectResponse("/ui/", status_code=307)

    @router.get("/ui/login", response_model=None)
    async def login_form(request: Request, code: str | None = None, next: str | None = None) -> Response:
        next_path = safe_next(next)
        if code is not None:
            try:
                sid, session = await sessions.redeem(code)
            except LoginRefused as e:
                return login_page(next_path, str(e), status=401)
            return signed_in(request, sid, session, next_path)
        if await current(request) is not None:
            return RedirectResponse(next_path, status_code=303)
        return login_page(next_path)

    @router.post("/ui/login", response_model=None)
    async def login(request: Request) -> Response:
        form = dict(parse_qsl((await request.body())[:8192].decode("utf-8", "replace")))
        next_path = safe_next(form.get("next"))
        token = form.get("token", "")
        if not token.strip():
            return login_page(next_path, "type an API token", status=400)
        try:
            sid, session = await sessions.login(token)
        except LoginRefused as e:
            return login_page(next_path, str(e), status=401)
        return signed_in(request, sid, session, next_path)

    @router.post("/ui/logout")
    async def logout(request: Request) -> RedirectResponse:
        sid = request.cookies.get(COOKIE)
        if sid:
            await sessions.end(sid)
        response = RedirectResponse("/ui/login", status_code=303)
        response.delete_cookie(COOKIE, path="/")
        return response

    @router.get("/ui/static/{name}")
    async def static(name: str) -> Response:
        media = ASSETS.get(name)
        if media is None:
            return not_found_page(f"The console has no file named {name}.")
        return Response(
            _asset(name), media_type=media, headers={**SECURITY_HEADERS, "Cache-Control": "no-cache"}
        )

    @router.get("/ui/", response_model=None)
    @router.get("/ui/devices", response_model=None)
    @router.get("/ui/dataflows", response_model=None)
    @router.get("/ui/submit", response_model=None)
    async def listing(request: Request) -> Response:
        if await current(request) is None:
            return to_login(request)
        return shell("ECHO")

    @router.get("/ui/dataflows/{df_id}", response_model=None)
    async def dataflow_page(request: Request, df_id: str) -> Response:
        if await current(request) is None:
            return to_login(request)
        try:
            df = await ctx.store.get(df_id)
        except NotFoundError:
            return not_found_page(
                f"There is no dataflow {df_id}: it may have been deleted, or the link is wrong."
            )
        return shell(f"{df.name} · ECHO")

    @router.get("/ui/devices/{device_id}", response_model=None)
    async def device_page(request: Request, device_id: str) -> Response:
        if await current(request) is None:
            return to_login(request)
        reply = await ctx.bus.request(
            ctx.names.registry_get, DeviceGetRequest(device=device_id), DeviceGetReply
        )
        if reply.device is None:
            return not_found_page(f"There is no device {device_id} in this fleet.")
        return shell(f"{device_id} · ECHO")

    @router.get("/ui/{rest:path}", response_model=None)
    async def unknown(rest: str) -> Response:
        return not_found_page(f"The console has no page /ui/{rest}.")

    return router


def console_api_router(ctx: ApiContext, sessions: ConsoleSessions) -> APIRouter:
    router = APIRouter()

    @router.post(
        "/api/v1/console/codes",
        status_code=201,
        response_model=LoginCode,
        responses=ERRORS,
        summary=f"A one-time console login code for your token's role (valid {CODE_SECONDS:.0f} s, once)",
    )
    async def create_code(request: Request, dataflow: str | None = None) -> LoginCode:
        who: Principal = request.state.principal
        if dataflow is not None:
            await ctx.store.get(dataflow)  # 404 for an unknown dataflow
        code, expires = await sessions.issue_code(who)
        path = f"/ui/login?code={code}"
        if dataflow is not None:
            path += "&next=" + quote(f"/ui/dataflows/{dataflow}", safe="")
        return LoginCode(code=code, expires_in=round(expires - sessions.clock(), 3), path=path)

    @router.get(
        "/api/v1/console/session",
        response_model=ConsoleSession,
        summary="Who the console acts for: role, CSRF secret (cookie sessions), Grafana's address",
    )
    async def whoami(request: Request) -> ConsoleSession:
        who: Principal = request.state.principal
        session: Session | None = getattr(request.state, "session", None)
        return ConsoleSession(
            role=who.role.value,
            token=who.token_id,
            csrf=session.csrf if session is not None else None,
            expires=session.expires if session is not None else who.expires,
            grafana_url=ctx.settings.grafana_url,
        )

    @router.post(
        "/api/v1/specs/validate",
        response_model=SpecCheck,
        responses=ERRORS,
        openapi_extra=SPEC_BODY,
        summary="Check a dataflow spec without submitting it: every problem, with its line",
    )
    async def check_spec(request: Request) -> SpecCheck:
        body = await read_body(request, ctx.settings.max_body_bytes)
        try:
            await validate(ctx, read_spec(body, request.headers.get("content-type")))
        except SpecError as e:
            return SpecCheck(valid=False, errors=[ErrorItem(**p.as_dict()) for p in locate(body, e.problems)])
        return SpecCheck(valid=True)

    return router


__all__ = ["console_api_router", "console_router"]
