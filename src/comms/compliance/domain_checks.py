"""Sending domains looked up again by themselves (COMPLIANCE.md M5).

``POST /communication/settings/domains/{domain}/verify`` checks a domain when the tenant asks.
Records change later (a DNS migration drops the DKIM key, a new provider rewrites SPF), and
marketing from a domain whose mail now fails authentication is what gets a sender blocked. So the
dispatcher's hourly maintenance looks up each verified domain again once its last check is a day
old; a domain that no longer passes loses its verified state (marketing from it is refused at
acceptance, naming what is missing) and the audit trail says so (``domain.verification_lost``). A
DNS server that cannot be asked changes nothing: the domain is tried again next round.
"""

from __future__ import annotations

import logging
import time
from datetime import datetime, timedelta

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from comms.accounts import service as accounts
from comms.accounts.repository import ProviderAccountRepository
from comms.compliance import audit
from comms.compliance.dns_auth import DkimSigners, DnsUnavailable, authenticate_domain, make_resolver
from comms.compliance.settings import load_settings
from comms.kit.db import Database
from comms.kit.secretbox import SecretBox
from comms.models import Tenant

log = logging.getLogger("comms.compliance")
RECHECK_EVERY = timedelta(days=1)


async def dkim_signers(session: AsyncSession, tenant_id: str, domain: str, box: SecretBox) -> DkimSigners:
    """Who signs the tenant's mail from ``domain`` (see DkimSigners): its email accounts that sign
    with a key of their own (``Provider.dkim_signer``: that key must be published at its
    selector), and those whose vendor signs with keys it publishes for the tenant
    (``Provider.dkim_hosts``: a selector must lead there). Any email account may carry mail from
    any of the tenant's domains (failover), so each must be able to sign it aligned."""
    keys: dict[str, tuple[str, str]] = {}
    hosted: dict[str, tuple[str, ...]] = {}
    for row in await ProviderAccountRepository(session, tenant_id).list("email"):
        try:
            cls = accounts.provider_class(row.provider, row.channel)
            config = accounts.unseal(cls, row.config, box)
            signer, hosts = cls.dkim_signer(config), cls.dkim_hosts(config)
        except Exception as exc:  # an account that cannot be read signs nothing
            log.warning("provider account unreadable for the DKIM check: %s", type(exc).__name__)
            continue
        who = f"the {row.provider} account {row.name!r}"
        if signer is not None and signer[0] == domain:
            keys[signer[1]] = (who, signer[2])
        elif hosts:
            hosted[who] = hosts
    return DkimSigners(keys=keys, hosted=hosted)


UNREACHABLE_PAUSE = 6 * 3600.0  # seconds a domain whose DNS could not be asked waits its next try


class DomainRechecker:
    """Looks up again the verified domains whose last check is older than a day, the oldest
    first. One whose DNS cannot be asked is left for UNREACHABLE_PAUSE, so a few domains with
    dead nameservers (each costs a timeout) do not use up every round's time."""

    def __init__(self, db: Database, box: SecretBox, nameserver: str | None) -> None:
        self.db = db
        self.box = box
        self.nameserver = nameserver
        self._unreachable_until: dict[tuple[str, str], float] = {}

    async def run(self, now: datetime, every: timedelta = RECHECK_EVERY, budget_seconds: float = 20.0) -> int:
        """Re-check what is due for at most about ``budget_seconds``; returns how many were checked."""
        deadline = time.monotonic() + budget_seconds
        async with self.db.read() as session:
            tenants = (await session.execute(select(Tenant.id, Tenant.settings))).all()
        due = sorted(
            (earlier.checked_at, tenant_id, name, earlier)
            for tenant_id, raw_settings in tenants
            for name, earlier in load_settings(raw_settings).email_domains.items()
            if earlier.verified
            and datetime.fromisoformat(earlier.checked_at) <= now - every
            and self._unreachable_until.get((tenant_id, name), 0.0) <= time.monotonic()
        )
        checked = 0
        for _, tenant_id, name, earlier in due:
            if time.monotonic() > deadline:
                break
            async with self.db.read() as session:
                signers = await dkim_signers(session, tenant_id, name, self.box)
            try:
                result = await authenticate_domain(
                    make_resolver(self.nameserver), name, earlier.dkim_selectors, now, signers
                )
            except DnsUnavailable as exc:
                log.warning("sending domain not re-checked: %s", exc, extra={"domain": name})
                self._unreachable_until[(tenant_id, name)] = time.monotonic() + UNREACHABLE_PAUSE
                continue
            except Exception:
                # A record this code cannot read must not stop the round: every domain after it
                # (oldest checked first) would never be looked at again.
                log.exception("sending domain check failed", extra={"domain": name})
                self._unreachable_until[(tenant_id, name)] = time.monotonic() + UNREACHABLE_PAUSE
                continue
            async with self.db.begin() as session:
                # Locked: a settings change committed meanwhile must not be written over.
                tenant = await session.get(Tenant, tenant_id, with_for_update=True)
                if tenant is None:
                    continue
                fresh = load_settings(tenant.settings)
                if fresh.email_domains.get(name) != earlier:
                    continue  # checked (or removed) through the API, or by another worker, meanwhile
                fresh.email_domains[name] = result
                tenant.settings = fresh.model_dump()
                tenant.updated_at = now
                if not result.verified:
                    audit.record(
                        session, tenant_id, "domain.verification_lost", actor="comms",
                        domain=name, missing=result.missing(),
                    )  # fmt: skip
                    log.warning(
                        "sending domain no longer passes authentication",
                        extra={"tenant": tenant_id, "domain": name, "missing": result.missing()},
                    )
            checked += 1
        return checked


__all__ = ["RECHECK_EVERY", "DomainRechecker", "dkim_signers"]
