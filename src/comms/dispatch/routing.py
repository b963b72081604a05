"""Which provider carries a tenant's messages on a channel, in failover order.

Per-tenant provider accounts plug in here; with none configured for a channel the ``outbox``
provider is used (CONTRACT.md), which is the embedded default.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from comms.providers.base import Provider
from comms.providers.outbox import OutboxProvider


@dataclass(frozen=True, slots=True)
class Route:
    provider: Provider
    account_id: str | None

    @property
    def name(self) -> str:
        return self.provider.name


class Router:
    def __init__(self, outbox_dir: Path) -> None:
        self._outbox = Route(OutboxProvider(outbox_dir), None)

    async def routes(self, tenant_id: str, channel: str) -> list[Route]:
        return [self._outbox]

    async def close(self) -> None:
        await self._outbox.provider.close()
