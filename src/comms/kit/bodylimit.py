"""A ceiling on request bodies, as a plain ASGI middleware.

Routes that let the framework read their body (templates, settings, providers, consents, ...)
would otherwise take any size into memory before validating it (a 30 MB template grew the server
by ~90 MB, to answer 422). Here such a body is read first, up to the limit: past it the answer is
413 in the envelope at once; within it the route gets the body as it came. Routes that read their
own body stream it against a limit of their own and are left to it: the bulk send
(COMMS_MAX_BODY_BYTES), provider callbacks, the unsubscribe page, mailto unsubscribes and
complaint reports.
"""

from __future__ import annotations

from typing import Any

from comms.kit.http import reply
from comms.kit.requestlog import Message, Receive, Scope, Send

OWN_LIMITS = (
    "/communication/bulk",
    "/communication/unsubscribe/mailto",
    "/communication/complaints/arf",
    "/webhooks/",
    "/u/",
)


class BodyLimitMiddleware:
    def __init__(self, app: Any, limit: int) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"].startswith(OWN_LIMITS):
            await self.app(scope, receive, send)
            return
        too_large = reply(413, f"request body over the limit of {self.limit} bytes")
        declared = dict(scope.get("headers") or []).get(b"content-length", b"")
        if declared.isdigit() and int(declared) > self.limit:
            await too_large(scope, receive, send)
            return
        chunks: list[bytes] = []
        size = 0
        while True:
            message: Message = await receive()
            if message["type"] != "http.request":  # the client went away: let the app see it
                break
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.limit:
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
                return {"type": "http.request", "body": body, "more_body": False}
            after: Message = await receive()  # after the body: a disconnect, when it comes
            return after

        await self.app(scope, replay, send)


__all__ = ["OWN_LIMITS", "BodyLimitMiddleware"]
