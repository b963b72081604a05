"""A ceiling on request bodies, as a plain ASGI middleware.

A route that lets the framework read its body (templates, settings, providers, consents, ...)
would otherwise take any size into memory before validating it (a 30 MB template grew the server
by ~90 MB, to answer 422), and so would the app-wide NUL check (kit/nul.py) and the provider
callbacks, which read bodies before anything is authenticated. Here every body is read first,
up to the limit of its path: past it the answer is 413 in the envelope at once; within it the
route gets the body as it came. Only the bulk send is left alone: it streams its body against
COMMS_MAX_BODY_BYTES itself (up to 64 MiB, which is not to be buffered twice).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from comms.kit.http import reply
from comms.kit.requestlog import Message, Receive, Scope, Send

STREAMS_ITS_OWN = ("/communication/bulk",)


class BodyLimitMiddleware:
    """``limit``: bytes for any path; ``limits``: path prefix -> bytes, for those that differ."""

    def __init__(self, app: Any, limit: int, limits: Mapping[str, int] | None = None) -> None:
        self.app = app
        self.limit = limit
        self.limits = dict(limits or {})

    def _limit_of(self, path: str) -> int:
        for prefix, limit in self.limits.items():
            if path.startswith(prefix):
                return limit
        return self.limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in STREAMS_ITS_OWN:
            await self.app(scope, receive, send)
            return
        limit = self._limit_of(scope["path"])
        too_large = reply(413, f"request body over the limit of {limit} bytes")
        declared = dict(scope.get("headers") or []).get(b"content-length", b"")
        if declared.isdigit() and int(declared) > limit:
            await too_large(scope, receive, send)
            return
        chunks: list[bytes] = []
        size = 0
        disconnected = False
        while True:
            message: Message = await receive()
            if message["type"] != "http.request":  # the client went away mid-body
                disconnected = True
                break
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > limit:
                await too_large(scope, receive, send)
                return
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        body = b"".join(chunks)
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                if disconnected:  # what the app would have seen: the disconnect, not half a body
                    return {"type": "http.disconnect"}
                return {"type": "http.request", "body": body, "more_body": False}
            after: Message = await receive()  # after the body: a disconnect, when it comes
            return after

        await self.app(scope, replay, send)


__all__ = ["STREAMS_ITS_OWN", "BodyLimitMiddleware"]
