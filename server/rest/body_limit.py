"""Cap request bodies (JSON and uploads alike) at ``settings.max_upload_bytes``.

A declared ``Content-Length`` over the cap is refused before any byte is read;
every body (chunked ones included) is also counted while it streams in and
refused the moment it passes the cap — so an oversized upload never fills memory or disk.
Both answer 413 with ``{"error": ...}``. Before answering, the rest of the body
is read and discarded (up to a bound, :data:`DRAIN_FACTOR` × the cap): closing
a socket with unread data makes the kernel reset the connection, and the
client would see "connection reset" instead of the 413 and its message.
"""

from __future__ import annotations

from fastapi import HTTPException, status
from fastapi.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

#: an oversized body is drained up to this many times the cap, then the connection closes
DRAIN_FACTOR = 4


async def _discard_rest(receive: Receive, limit: int) -> None:
    """Read and drop what is left of the request body, at most ``limit`` bytes."""
    seen = 0
    while seen <= limit:
        message = await receive()
        if message["type"] != "http.request":
            return
        seen += len(message.get("body", b""))
        if not message.get("more_body", False):
            return


def _too_large(limit: int) -> str:
    return f"request body is larger than the server's limit of {limit} bytes"


class BodySizeLimitMiddleware:
    """ASGI middleware refusing request bodies larger than ``max_bytes`` with 413."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        if max_bytes <= 0:
            raise ValueError(f"max_bytes must be positive, got {max_bytes}")
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            response = JSONResponse(
                {"error": _too_large(self.max_bytes)},
                status_code=status.HTTP_413_CONTENT_TOO_LARGE,
                headers={"Connection": "close"},
            )
            await _discard_rest(receive, DRAIN_FACTOR * self.max_bytes)
            await response(scope, receive, send)
            return

        received = 0

        async def counting_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    if message.get("more_body", False):
                        await _discard_rest(receive, DRAIN_FACTOR * self.max_bytes)
                    # Raised inside the route's body read, so the app's handlers render it.
                    raise HTTPException(
                        status.HTTP_413_CONTENT_TOO_LARGE, _too_large(self.max_bytes)
                    )
            return message

        await self.app(scope, counting_receive, send)
