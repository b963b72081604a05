"""Text with NUL characters is refused at the edge, on every backend.

PostgreSQL cannot store U+0000 in ``text`` (SQLite can), so such input would be a 500 on one
backend and stored on the other. JSON can only carry it escaped (``\\u0000``), so a byte search
of the body finds every candidate at memchr speed; only a body that has one is walked to name
the field.
"""

from __future__ import annotations

import json
from typing import Any

from fastapi import Request

from comms.errors import ValidationFailed

MESSAGE = "must not contain NUL (\\u0000) characters"
_ESCAPED = b"\\u0000"
# Endpoints that read (and size-limit) their body themselves; they call refuse_in_body.
READS_OWN_BODY = frozenset({"/communication/bulk"})


def nul_path(value: Any, path: str = "") -> str | None:
    """The dotted path of the first string (or key) holding a NUL in a decoded JSON value."""
    if isinstance(value, str):
        return (path or "body") if "\x00" in value else None
    if isinstance(value, dict):
        for key, item in value.items():
            where = f"{path}.{key}" if path else str(key)
            if "\x00" in str(key):
                return where
            found = nul_path(item, where)
            if found is not None:
                return found
    elif isinstance(value, list):
        for index, item in enumerate(value):
            found = nul_path(item, f"{path}[{index}]")
            if found is not None:
                return found
    return None


def refuse_in_body(raw: bytes) -> None:
    """422 naming the field when the JSON body carries a NUL character; else nothing."""
    if _ESCAPED not in raw:
        return
    try:
        decoded = json.loads(raw)
    except (ValueError, RecursionError):
        return  # not JSON (or a literal backslash sequence): the endpoint's own parsing answers
    where = nul_path(decoded)
    if where is not None:
        raise ValidationFailed.single(where, MESSAGE)


async def refuse_nul_characters(request: Request) -> None:
    """App-wide dependency: the path, the query string, and JSON bodies of the endpoints that let
    the framework read them."""
    if "\x00" in request.url.path:  # an id in the path, say: PostgreSQL could not compare it
        raise ValidationFailed.single("path", MESSAGE)
    for name, value in request.query_params.multi_items():
        if "\x00" in value or "\x00" in name:
            raise ValidationFailed.single(name.replace("\x00", ""), MESSAGE)
    if (
        request.method in ("POST", "PUT", "PATCH")
        and request.url.path not in READS_OWN_BODY
        and "json" in request.headers.get("content-type", "")
    ):
        refuse_in_body(await request.body())
