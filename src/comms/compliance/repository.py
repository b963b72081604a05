"""Suppressions and consents: all their SQL."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from comms.models import Consent, Suppression

_CHUNK = 5000


class SuppressionRepository:
    def __init__(self, session: AsyncSession, tenant_id: str) -> None:
        self.session = session
        self.tenant_id = tenant_id

    async def count(self, channel: str) -> int:
        stmt = (
            select(func.count())
            .select_from(Suppression)
            .where(Suppression.tenant_id == self.tenant_id, Suppression.channel == channel)
        )
        return int(await self.session.scalar(stmt) or 0)

    async def scopes_for(self, channel: str, hashes: Sequence[str]) -> dict[str, str]:
        """hash -> scope ("marketing" or "all") for the suppressed ones among ``hashes``."""
        found: dict[str, str] = {}
        for start in range(0, len(hashes), _CHUNK):
            chunk = hashes[start : start + _CHUNK]
            rows = await self.session.execute(
                select(Suppression.address_hash, Suppression.scope, Suppression.reason).where(
                    Suppression.tenant_id == self.tenant_id,
                    Suppression.channel == channel,
                    Suppression.address_hash.in_(chunk),
                )
            )
            for h, scope, reason in rows:
                found[h] = f"{scope}:{reason}"
        return found


class ConsentRepository:
    def __init__(self, session: AsyncSession, tenant_id: str) -> None:
        self.session = session
        self.tenant_id = tenant_id

    async def latest_for(self, channel: str, hashes: Iterable[str]) -> dict[str, Consent]:
        """The newest consent record per address hash."""
        latest: dict[str, Consent] = {}
        ordered = list(hashes)
        for start in range(0, len(ordered), _CHUNK):
            chunk = ordered[start : start + _CHUNK]
            rows = await self.session.scalars(
                select(Consent)
                .where(
                    Consent.tenant_id == self.tenant_id,
                    Consent.channel == channel,
                    Consent.address_hash.in_(chunk),
                )
                .order_by(Consent.created_at, Consent.id)
            )
            for consent in rows:
                latest[consent.address_hash] = consent
        return latest
