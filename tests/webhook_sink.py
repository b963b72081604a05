"""A real HTTP server that speaks the webhook provider's wire format and checks its signature.

Used by tests and by bench/dispatch.py. Behaviour is switchable at run time: answer normally,
fail with a status, answer per message, or hang (to make the caller time out).
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import msgspec
from aiohttp import web


@dataclass
class WebhookSink:
    secret: str
    host: str = "127.0.0.1"
    port: int = 0
    fail_status: int | None = None
    fail_text: str = "failing on purpose"  # the body of a fail_status answer
    hang_seconds: float = 0.0
    hang_only: set[str] = field(default_factory=set)  # hang only requests of these categories
    hold: asyncio.Event | None = None  # when given, every request waits for it before answering
    per_message: dict[str, dict[str, Any]] = field(default_factory=dict)
    received: Counter[str] = field(default_factory=Counter)
    bad_signatures: int = 0
    requests: int = 0
    flagged: set[str] = field(default_factory=set)
    bodies: list[dict[str, Any]] = field(default_factory=list)
    call_sizes: list[int] = field(default_factory=list)  # messages per request, in arrival order
    keep_bodies: bool = True
    _runner: web.AppRunner | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}/send"

    async def start(self) -> WebhookSink:
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_post("/send", self._handle)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port)
        await site.start()
        sockets = site._server.sockets if site._server else []
        self.port = sockets[0].getsockname()[1]
        return self

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def _handle(self, request: web.Request) -> web.Response:
        self.requests += 1
        body = await request.read()
        timestamp = request.headers.get("X-Comms-Timestamp", "")
        expected = (
            "v1="
            + hmac.new(self.secret.encode(), timestamp.encode() + b"." + body, hashlib.sha256).hexdigest()
        )
        given = request.headers.get("X-Comms-Signature", "")
        if not hmac.compare_digest(expected, given) or abs(time.time() - int(timestamp or 0)) > 300:
            self.bad_signatures += 1
            return web.Response(status=401, text="bad signature")
        if self.hold is not None:
            await self.hold.wait()
        if self.hang_seconds:
            categories = {m.get("category") for m in msgspec.json.decode(body)["messages"]}
            if not self.hang_only or categories & self.hang_only:
                await asyncio.sleep(self.hang_seconds)
        if self.fail_status is not None:
            return web.Response(status=self.fail_status, text=self.fail_text, headers={"Retry-After": "0"})
        payload = msgspec.json.decode(body)
        self.call_sizes.append(len(payload["messages"]))
        results = []
        for message in payload["messages"]:
            self.received[message["id"]] += 1
            if message.get("possible_duplicate"):
                self.flagged.add(message["id"])
            if self.keep_bodies:
                self.bodies.append(message)
            answer = self.per_message.get(message["to"], {"status": "accepted"})
            results.append({"id": message["id"], "message_id": f"gw-{message['id'][-8:]}", **answer})
        return web.json_response({"results": results})
