"""Cap request bodies (JSON and uploads alike) at ``settings.max_upload_bytes``.

A declared ``Content-Length`` over the cap is refused before any byte is read;
every body (chunked ones included) is also counted while it streams in and
refused the moment it passes the cap — so an oversized upload never fills memory or disk.
Both answer 413 with ``{"error": ...}``.

The key check comes first, by construction: the refusal is raised from the
body read itself, and every route reads its body only after its key
dependency has admitted the caller. A request without a valid key gets its
401/403 and the server reads none of its body, whatever size it declares.

Before the 413, the rest of the body is read and discarded (up to a bound,
:data:`DRAIN_FACTOR` × the cap): closing a socket with unread data makes the
kernel reset the connection, and the client would see "connection reset"
instead of the 413 and its message. Only an admitted caller gets that drain.
"""

from __future__ import annotations

from fastapi import HTTPException, status
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


def _refusal(limit: int) -> HTTPException:
    return HTTPException(
        status.HTTP_413_CONTENT_TOO_LARGE,
        f"request body is larger than the server's limit of {limit} bytes",
        headers={"Connection": "close"},
    )


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
        too_large = declared is not None and declared.isdigit() and int(declared) > self.max_bytes
        received = 0

        async def counting_receive() -> Message:
            # First called when the route reads its body: after its key check.
            nonlocal received
            if too_large:
                await _discard_rest(receive, DRAIN_FACTOR * self.max_bytes)
                raise _refusal(self.max_bytes)
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    if message.get("more_body", False):
                        await _discard_rest(receive, DRAIN_FACTOR * self.max_bytes)
                    # Raised inside the route's body read, so the app's handlers render it.
                    raise _refusal(self.max_bytes)
            return message

        await self.app(scope, counting_receive, send)
