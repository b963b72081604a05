"""``Idempotency-Key``: a retry with the same key and body gets the first response; another body is 409.

The key row is written in the same transaction as the batch, so a crash cannot leave a batch
without its key or a key without its batch; two racing requests with one key collide on the
primary key and the loser answers from the winner's row.
"""

from __future__ import annotations

import hashlib

from sqlalchemy.ext.asyncio import AsyncSession

from comms.errors import Conflict, ValidationFailed
from comms.kit.clock import utcnow
from comms.models import IdempotencyKey

MAX_KEY_LENGTH = 255


def request_fingerprint(path: str, body: bytes) -> str:
    return hashlib.sha256(path.encode() + b"\0" + body).hexdigest()


def check_key(key: str) -> str:
    key = key.strip()
    if not key or len(key) > MAX_KEY_LENGTH:
        raise ValidationFailed.single("Idempotency-Key", f"must be 1 to {MAX_KEY_LENGTH} characters")
    return key


async def find_previous(
    session: AsyncSession, tenant_id: str, key: str, fingerprint: str
) -> tuple[int, bytes] | None:
    row = await session.get(IdempotencyKey, (tenant_id, key))
    if row is None:
        return None
    if row.request_hash != fingerprint:
        raise Conflict("Idempotency-Key was already used with a different request body")
    return row.status_code, row.response_body.encode()


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
