"""Access log and request ids, as a plain ASGI middleware.

One structured line per request: method, the route's template (``/communication/logs/{log_id}``,
never the concrete path or query string, which can carry addresses), status and duration, and a
request id that is echoed in ``X-Request-ID`` so a caller can quote it.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable, MutableMapping
from contextvars import ContextVar
from typing import Any

from comms.kit.http import reply

log = logging.getLogger("comms.access")
request_id_var: ContextVar[str | None] = ContextVar("request_id", default=None)

Scope = dict[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Any]
Send = Callable[[Message], Any]


class RequestLogMiddleware:
    def __init__(self, app: Any, on_finish: Callable[[str, str, int], None] | None = None) -> None:
        self.app = app
        self.on_finish = on_finish

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        incoming = dict(scope.get("headers") or []).get(b"x-request-id", b"").decode("latin-1")
        request_id = incoming if 0 < len(incoming) <= 64 and incoming.isprintable() else uuid.uuid4().hex[:16]
        token = request_id_var.set(request_id)
        started = time.perf_counter()
        status = 500

        started_response = False

        async def send_wrapper(message: Message) -> None:
            nonlocal status, started_response
            if message["type"] == "http.response.start":
                status = message["status"]
                started_response = True
                message.setdefault("headers", []).append((b"x-request-id", request_id.encode()))
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        except Exception as exc:
            # Answered here, inside the request's id, rather than by the server's last-resort
            # handler outside this middleware (which knew neither the id nor the header).
            log.error("unhandled error", exc_info=exc, extra={"request_id": request_id})
            if started_response:
                raise
            status = 500
            await reply(500, f"internal error (request id {request_id})")(scope, receive, send_wrapper)
        finally:
            route = scope.get("route")
            template = getattr(route, "path", None) or "unmatched"
            elapsed = time.perf_counter() - started
            log.info(
                "request",
                extra={
                    "request_id": request_id,
                    "method": scope.get("method"),
                    "route": template,
                    "status": status,
                    "ms": round(elapsed * 1000, 1),
                },
            )
            if self.on_finish is not None:
                self.on_finish(str(scope.get("method")), template, status)
            request_id_var.reset(token)
