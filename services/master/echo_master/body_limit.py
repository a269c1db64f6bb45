"""Bodies over the API's size limit get a 413, whatever the client does.

A client that sends its whole body before reading the answer (Python's urllib, curl
without ``Expect``) would see a connection reset if the server answered and closed while
the body was still arriving: the unread bytes make the kernel reset the connection. So a
request whose ``Content-Length`` is over ``max_bytes`` is refused before any route runs,
after the body is read and thrown away (up to ``DRAIN_MAX`` bytes; a bigger one is refused
at once, a reset being the lesser harm), with ``Connection: close``. Bodies without a
length (chunked) are left to the routes, which count what they read.
"""

from __future__ import annotations

from starlette.requests import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .errors import BodyTooLarge
from .views import error_response

DRAIN_MAX = 64 << 20


class BodyLimit:
    def __init__(self, app: ASGIApp, *, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            length = next((v for k, v in scope["headers"] if k == b"content-length"), None)
            if length is not None and length.isdigit() and int(length) > self.max_bytes:
                if int(length) <= DRAIN_MAX:
                    await drain(receive)
                response = error_response(
                    413,
                    f"body of {int(length)} bytes exceeds the limit of {self.max_bytes} bytes",
                    headers={"Connection": "close"},
                )
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)


async def drain(receive: Receive) -> None:
    """Read the request's body to its end, keeping nothing."""
    while True:
        message: Message = await receive()
        if message["type"] != "http.request" or not message.get("more_body", False):
            return


async def read_body(request: Request, max_bytes: int) -> bytes:
    """A route's body, read up to ``max_bytes`` (``BodyTooLarge`` past it): the middleware
    refused a declared length over the limit already; this bounds a body sent without one."""
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > max_bytes:
            raise BodyTooLarge(f"body of more than {max_bytes} bytes exceeds the limit of {max_bytes} bytes")
        chunks.append(chunk)
    return b"".join(chunks)
