"""The response envelope (``code``, ``message``, ``timestamp``) and a fast JSON response."""

from __future__ import annotations

from typing import Any

import msgspec
from starlette.responses import Response

from comms.kit.clock import isoformat, utcnow

_encoder = msgspec.json.Encoder()


class FastJSONResponse(Response):
    media_type = "application/json"

    def render(self, content: Any) -> bytes:
        return _encoder.encode(content)


def envelope(code: int, message: str, **fields: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"code": code, "message": message, "timestamp": isoformat(utcnow())}
    body.update(fields)
    return body


def reply(code: int, message: str, headers: dict[str, str] | None = None, **fields: Any) -> FastJSONResponse:
    return FastJSONResponse(envelope(code, message, **fields), status_code=code, headers=headers)


def encode_json(value: Any) -> bytes:
    return _encoder.encode(value)
