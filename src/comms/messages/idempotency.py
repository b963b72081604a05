"""``Idempotency-Key``: a retry with the same key and body gets the first response; another body is 409.

The key row is written in the same transaction as the batch, so a crash cannot leave a batch
without its key or a key without its batch; two racing requests with one key collide on the
primary key and the loser answers from the winner's row.

A key is kept for KEY_TTL (24 hours, as Stripe and most payment APIs keep theirs): the stored
response holds recipients and content, which must not outlive the retention rules, so the
dispatcher's hourly maintenance deletes older keys, and an older key is free to be used again.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

import msgspec
from sqlalchemy import delete
from sqlalchemy.ext.asyncio import AsyncSession

from comms.errors import Conflict, ValidationFailed
from comms.kit.clock import utcnow
from comms.models import IdempotencyKey

MAX_KEY_LENGTH = 255
KEY_TTL = timedelta(hours=24)


_canonical = msgspec.json.Encoder(order="sorted").encode


def request_fingerprint(path: str, body: Any, unmask: bool) -> str:
    """The request as decoded, re-encoded with sorted keys: the same JSON with other spacing or
    key order is the same request (CONTRACT.md: "the same key and body"). Of the query only
    ``unmask`` counts: a replay of recipients shown raw must have asked for them raw (the
    ``page_size`` of a retry does not change the first answer, which it gets)."""
    digest = hashlib.sha256(path.encode() + b"\0" + (b"1" if unmask else b"0") + b"\0")
    digest.update(_canonical(body))
    return digest.hexdigest()


def check_key(key: str) -> str:
    key = key.strip()
    if not key or len(key) > MAX_KEY_LENGTH:
        raise ValidationFailed.single("Idempotency-Key", f"must be 1 to {MAX_KEY_LENGTH} characters")
    return key


def earlier_fingerprint(path_and_query: str, raw: bytes) -> str:
    """The fingerprint keys were stored with before the decoded request was hashed (the raw body
    and the whole query): a retry that straddles the upgrade still gets its replay. Keys live
    KEY_TTL, so a day after the upgrade no such key is left."""
    return hashlib.sha256(path_and_query.encode() + b"\0" + raw).hexdigest()


async def find_previous(
    session: AsyncSession,
    tenant_id: str,
    key: str,
    fingerprint: str,
    earlier: Callable[[], str] | None = None,
) -> tuple[int, bytes] | None:
    """The stored answer for this key and request; Conflict for this key and another request.
    ``earlier``: the request's fingerprint in the form keys were stored with before (computed
    only when the current one does not match)."""
    row = await session.get(IdempotencyKey, (tenant_id, key))
    if row is None or row.created_at < utcnow() - KEY_TTL:
        return None
    if row.request_hash != fingerprint and (earlier is None or row.request_hash != earlier()):
        raise Conflict("Idempotency-Key was already used with a different request")
    return row.status_code, row.response_body.encode()


async def forget_expired(
    session: AsyncSession, now: datetime, tenant_id: str | None = None, key: str | None = None
) -> int:
    """Delete keys older than KEY_TTL (all of them, or the one about to be used again)."""
    stmt = delete(IdempotencyKey).where(IdempotencyKey.created_at < now - KEY_TTL)
    if tenant_id is not None and key is not None:
        stmt = stmt.where(IdempotencyKey.tenant_id == tenant_id, IdempotencyKey.key == key)
    result = await session.execute(stmt.execution_options(synchronize_session=False))
    return int(result.rowcount or 0)  # type: ignore[attr-defined]


def remember(
    session: AsyncSession, tenant_id: str, key: str, fingerprint: str, status: int, body: bytes
) -> None:
    session.add(
        IdempotencyKey(
            tenant_id=tenant_id,
            key=key,
            request_hash=fingerprint,
            status_code=status,
            response_body=body.decode(),
            created_at=utcnow(),
        )
    )
