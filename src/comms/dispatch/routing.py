"""Which providers carry a tenant's messages on a channel, in failover order.

The tenant's enabled provider accounts for the channel, lowest ``priority`` first, skipping any
whose circuit breaker is open; with no account for the channel, the ``outbox`` provider (the
embedded default, CONTRACT.md). Accounts are re-read every few seconds, so a change through the
API reaches running dispatchers without a restart.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp

from comms.accounts import service as accounts
from comms.accounts.repository import ProviderAccountRepository
from comms.config import Settings
from comms.dispatch.breaker import Breaker, BreakerState
from comms.kit.db import Database
from comms.kit.netguard import PublicOnlyResolver
from comms.kit.secretbox import SecretBox
from comms.models import ProviderAccount
from comms.providers.base import Provider, ProviderContext
from comms.providers.outbox import OutboxProvider

ACCOUNTS_TTL = 5.0
# An instance replaced by a newer config of its account is closed this long after (a batch in
# flight may still be sending through it; its pooled connections must not stay open for ever).
RETIRE_AFTER = 600.0
log = logging.getLogger("comms.dispatch")


@dataclass(frozen=True, slots=True)
class Route:
    provider: Provider
    account_id: str | None
    rate_per_second: float | None = None

    @property
    def name(self) -> str:
        return self.provider.name


@dataclass
class _Cached:
    loaded_at: float
    routes: list[Route] = field(default_factory=list)


class Router:
    def __init__(
        self,
        outbox_dir: Path,
        db: Database | None = None,
        secrets: SecretBox | None = None,
        public_url: str = "http://127.0.0.1:8000",
        allow_private: bool = True,
    ) -> None:
        self._public_url = public_url
        self._allow_private = allow_private
        self._db = db
        self._secrets = secrets
        self._outbox_dir = outbox_dir
        self._http: aiohttp.ClientSession | None = None
        self._outbox = Route(OutboxProvider(outbox_dir), None)
        self._cache: dict[tuple[str, str], _Cached] = {}
        self._instances: dict[tuple[str, float], Provider] = {}
        self._retiring: set[Provider] = set()
        self._closing: set[asyncio.Task[None]] = set()
        self.breakers: dict[str, Breaker] = {}

    @classmethod
    def from_settings(cls, settings: Settings, db: Database, secrets: SecretBox) -> Router:
        """The process's router, as the settings say (API processes and workers alike)."""
        return cls(
            settings.resolved_outbox_dir,
            db,
            secrets,
            settings.resolved_public_url,
            allow_private=settings.provider_allow_private,
        )

    def _context(self, provider: str, account_id: str) -> ProviderContext:
        if self._http is None or self._http.closed:
            resolver = None if self._allow_private else PublicOnlyResolver()
            connector = aiohttp.TCPConnector(
                limit=256, limit_per_host=128, ttl_dns_cache=300, resolver=resolver
            )
            # No cookies: every tenant's calls share this session, and a cookie one tenant's
            # endpoint sets (Domain=amazonaws.com, say) must not ride along with another's.
            self._http = aiohttp.ClientSession(connector=connector, cookie_jar=aiohttp.DummyCookieJar())
        urls = accounts.callback_urls(self._public_url, provider, account_id)
        return ProviderContext(
            http=self._http,
            outbox_dir=self._outbox_dir,
            status_url=urls["status"],
            inbound_url=urls["inbound"],
            allow_private=self._allow_private,
        )

    async def routes(self, tenant_id: str, channel: str) -> list[Route]:
        configured = await self._configured(tenant_id, channel)
        if not configured:
            return [self._outbox]
        usable = [r for r in configured if self.breaker(r).allows()]
        # Every breaker open: try them anyway in order rather than fail without trying.
        return usable or configured

    def refresh(self) -> None:
        """Read the accounts again at the next lookup instead of within ACCOUNTS_TTL."""
        self._cache.clear()

    async def all_routes(self, tenant_id: str, channel: str) -> list[Route]:
        """Every configured route, open breaker or not (what could carry a message at all)."""
        return await self._configured(tenant_id, channel) or [self._outbox]

    async def _configured(self, tenant_id: str, channel: str) -> list[Route]:
        key = (tenant_id, channel)
        cached = self._cache.get(key)
        now = time.monotonic()
        if cached is not None and now - cached.loaded_at < ACCOUNTS_TTL:
            return cached.routes
        routes: list[Route] = []
        if self._db is not None and self._secrets is not None:
            async with self._db.read() as session:
                rows = await ProviderAccountRepository(session, tenant_id).list(channel, enabled_only=True)
            for row in rows:
                routes.append(Route(self.provider_for(row), row.id, row.rate_per_second))
        self._cache[key] = _Cached(now, routes)
        return routes

    async def route_of(self, provider: str | None, account_id: str | None) -> Route | None:
        """The route that carried a message earlier (its account, or the outbox), if it still exists."""
        if account_id is None:
            return self._outbox if provider == self._outbox.name else None
        if self._db is None:
            return None
        async with self._db.read() as session:
            row = await session.get(ProviderAccount, account_id)
        if row is None:
            return None
        return Route(self.provider_for(row), row.id, row.rate_per_second)

    def provider_for(self, row: ProviderAccount) -> Provider:
        """The provider instance of an account, built once per version of its config."""
        assert self._secrets is not None
        instance_key = (row.id, row.updated_at.timestamp())
        provider = self._instances.get(instance_key)
        if provider is None:
            cls = accounts.provider_class(row.provider, row.channel)
            config = accounts.unseal(cls, row.config, self._secrets)
            provider = cls.from_config(config, self._context(row.provider, row.id))
            self._instances[instance_key] = provider
            self._retire_older(row.id, instance_key)
        return provider

    def _retire_older(self, account_id: str, current: tuple[str, float]) -> None:
        older = [key for key in self._instances if key[0] == account_id and key != current]
        for key in older:
            provider = self._instances.pop(key)
            self._retiring.add(provider)
            with contextlib.suppress(RuntimeError):  # no running loop: closed by close()
                asyncio.get_running_loop().call_later(RETIRE_AFTER, self._close_retired, provider)

    def _close_retired(self, provider: Provider) -> None:
        if provider not in self._retiring:
            return  # the router closed it already
        self._retiring.discard(provider)
        task = asyncio.ensure_future(self._close_quietly(provider))
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)

    @staticmethod
    async def _close_quietly(provider: Provider) -> None:
        try:
            await provider.close()
        except Exception:
            log.warning("closing a replaced provider instance failed", exc_info=True)

    def breaker(self, route: Route) -> Breaker:
        if route.account_id is None:
            return Breaker(threshold=1_000_000)  # the outbox has nothing to fail over to
        return self.breakers.setdefault(route.account_id, Breaker())

    def report(self, route: Route, ok: bool) -> None:
        breaker = self.breaker(route)
        if ok:
            breaker.succeeded()
        else:
            breaker.failed()

    def breaker_states(self) -> dict[str, BreakerState]:
        return {account: b.state() for account, b in self.breakers.items()}

    async def close(self) -> None:
        if self._closing:
            await asyncio.gather(*self._closing, return_exceptions=True)
        retiring, self._retiring = self._retiring, set()
        for provider in {*self._instances.values(), *retiring, self._outbox.provider}:
            await provider.close()
        if self._http is not None:
            await self._http.close()
