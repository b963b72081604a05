"""The acceptance gates: which recipients of a bulk may be queued, and why not the others.

Applied to every recipient before anything is stored (and suppression again just before the
send, so that an unsubscribe between acceptance and dispatch wins). What applies hangs on the
category (COMPLIANCE.md section 0):

================  ==========================  ===============================
category          suppression list            consent basis
================  ==========================  ===============================
verification      no (it must reach the user)  no
transactional     bounce/complaint only        no
announcement      yes                          no
marketing         yes                          by recipient region's policy
================  ==========================  ===============================

Flow limits per number: verification SMS by ``otp_limits`` (1/min, 5/h, 10/day), at acceptance
(they count accepted codes, so a burst is refused before it is stored); every other SMS by
``sms_daily_limit`` (50 a day), just before the send (it counts what reached a provider, and one
grouped query per claimed batch keeps it off the acceptance path of a 100,000-recipient bulk).
"""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy.ext.asyncio import AsyncSession

from comms.compliance.addresses import address_hash
from comms.compliance.repository import (
    ConsentRepository,
    SuppressionRepository,
    numbers_at_daily_limit,
    verification_counts,
)
from comms.compliance.settings import ConsentPolicy, TenantSettings
from comms.compliance.wireless import is_wireless_address
from comms.kit.clock import utcnow
from comms.models import Consent

EEA_AND_UK = frozenset(
    "AT BE BG HR CY CZ DK EE FI FR DE GR HU IE IT LV LT LU MT NL PL PT RO SK SI ES SE IS LI NO GB".split()  # noqa: SIM905
    # The EU's outermost regions with numbers of their own (TFEU Art. 355(1): Guadeloupe, French
    # Guiana, Martinique, Reunion, Mayotte, Saint-Martin) and Aland (part of Finland): EU law
    # applies there as in the rest of the Union. (The Azores, Madeira and the Canaries have
    # Portuguese and Spanish numbers.)
    + "GP GF MQ RE YT MF AX".split()  # noqa: SIM905
)
# Used where the tenant set no policy for a region: the strictest reading of the law there.
DEFAULT_CONSENT_POLICY: dict[str, ConsentPolicy] = {"EU": "soft_opt_in", "CN": "opt_in", "*": "none"}
# What the law requires at least for marketing, whatever the tenant's settings say: the ePrivacy
# Directive (Art. 13; soft opt-in for a customer's own contact details, Art. 13(2)) in the EEA and
# the UK (PECR), consent in China (Advertising Law Art. 44, MIIT Order 31). A tenant may ask for
# more, never less (as with quiet hours).
LEGAL_CONSENT_FLOOR: dict[str, ConsentPolicy] = {"EU": "soft_opt_in", "CN": "opt_in"}
_STRENGTH: dict[str, int] = {"none": 0, "soft_opt_in": 1, "opt_in": 2}


def legal_consent_floor(region: str) -> ConsentPolicy:
    """The least basis the law accepts for marketing to ``region`` (a country, or EU)."""
    region = region.upper()
    if region in LEGAL_CONSENT_FLOOR:
        return LEGAL_CONSENT_FLOOR[region]
    return LEGAL_CONSENT_FLOOR["EU"] if region in EEA_AND_UK else "none"


def weakens_legal_consent(region: str, policy: str) -> str | None:
    """Why a tenant's ``consent_policy[region]`` would be weaker than the law's, or None."""
    floor = legal_consent_floor(region)
    if policy in _STRENGTH and _STRENGTH[policy] < _STRENGTH[floor]:
        return (
            f"{region.upper()}: the law requires at least {floor} for marketing; "
            "a tenant may ask for more, not less"
        )
    return None


SUPPRESSION_MESSAGES = {
    "unsubscribed": "recipient unsubscribed",
    "stop": "recipient unsubscribed",
    "objection": "recipient unsubscribed",
    "hard_bounce": "recipient address bounced",
    "complaint": "recipient complained",
    "manual": "recipient suppressed",
    "erasure": "recipient erased their data",
}
NO_CONSENT = "no marketing consent"
NO_WRITTEN_CONSENT = "no prior express written consent"
RATE_LIMITED = "rate limited"
NO_AD_DISCLOSURE = "no ad disclosure: set ad_disclosure in settings to mail recipients who did not opt in"
NO_WIRELESS_AUTHORIZATION = (
    "wireless carrier domain: marketing needs express prior authorization (consent basis opt_in)"
)


def consent_policy_for(settings: TenantSettings, region: str | None) -> ConsentPolicy:
    region = (region or settings.default_region).upper()
    chosen = _configured_policy(settings, region)
    floor = legal_consent_floor(region)
    # A setting stored weaker than the law (before PUT /settings refused such) is read as the law.
    return chosen if _STRENGTH[chosen] >= _STRENGTH[floor] else floor


def _configured_policy(settings: TenantSettings, region: str) -> ConsentPolicy:
    for source in (settings.consent_policy, DEFAULT_CONSENT_POLICY):
        if region in source:
            return source[region]
        if region in EEA_AND_UK and "EU" in source:
            return source["EU"]
    return settings.consent_policy.get("*", DEFAULT_CONSENT_POLICY["*"])


def suppression_applies(category: str, scope: str) -> bool:
    if category == "verification":
        return False
    if category == "transactional":
        return scope == "all"
    return True


def _consent_ok(consent: Consent | None, policy: ConsentPolicy) -> bool:
    if policy == "none":
        return True
    if consent is None or consent.status != "opted_in":
        return False
    if consent.basis in ("opt_in", "written"):
        return True
    return bool(
        policy == "soft_opt_in"
        and consent.basis == "soft_opt_in"
        and consent.source == "sale"
        and consent.collected_with_optout
    )


class AcceptanceGate:
    """Decides, per recipient, ``None`` (may be queued) or ``(status, error)``.

    :meth:`prepare` learns once whether anything can stop a recipient at all (a tenant with no
    suppressions sending non-marketing: nothing can, and no address is even hashed); :meth:`load`
    then fetches the suppressions and consents of each chunk of recipients.
    """

    def __init__(
        self,
        session: AsyncSession,
        tenant_id: str,
        channel: str,
        category: str,
        settings: TenantSettings,
        salt: str,
        check_suppression: bool,
        check_flow: bool = False,
        check_daily: bool = False,
    ) -> None:
        self.session = session
        self.tenant_id = tenant_id
        self.channel = channel
        self.category = category
        self.settings = settings
        self.salt = salt
        self._check_suppression = check_suppression
        self._check_consent = category == "marketing"
        self._check_flow = check_flow
        self._check_daily = check_daily
        self._flow: dict[str, tuple[int, int, int]] = {}
        # How concurrent requests' counts of verification codes are kept apart (see
        # verification_counts): nothing until the caller says it will store what it accepts.
        self._serialize = False
        self._at_daily_limit: set[str] = set()
        self._suppressed: dict[str, str] = {}
        self._consents: dict[str, Consent] = {}
        self._hashes: dict[str, str] = {}

    @classmethod
    async def prepare(
        cls,
        session: AsyncSession,
        *,
        tenant_id: str,
        salt: str,
        settings: TenantSettings,
        channel: str,
        category: str,
        at_dispatch: bool = False,
    ) -> AcceptanceGate:
        """``at_dispatch``: the re-check just before sending, where flow limits no longer apply
        (they count accepted messages, this one among them)."""
        check_suppression = (
            category != "verification" and await SuppressionRepository(session, tenant_id).count(channel) > 0
        )
        check_flow = not at_dispatch and channel == "sms" and category == "verification"
        check_daily = at_dispatch and channel == "sms" and category != "verification"
        return cls(
            session, tenant_id, channel, category, settings, salt, check_suppression, check_flow, check_daily
        )

    def serialize_counts(self) -> None:
        """The request will store what it accepts: its counts of verification codes are taken
        under a lock (a dry run stores nothing and takes none)."""
        self._serialize = True

    async def load(self, keys: Sequence[str]) -> None:
        """Fetch what is needed to :meth:`check` these recipients."""
        if self._check_flow and keys:
            counts = await verification_counts(self.session, self.tenant_id, keys, utcnow(), self._serialize)
            self._flow.update(counts)
        if self._check_daily and keys:
            self._at_daily_limit |= await numbers_at_daily_limit(
                self.session, self.tenant_id, keys, utcnow(), self.settings.sms_daily_limit
            )
        if not (self._check_suppression or self._check_consent) or not keys:
            return
        salt, channel = self.salt, self.channel
        hashes = {key: address_hash(salt, channel, key) for key in keys}
        self._hashes.update(hashes)
        if self._check_suppression:
            found = await SuppressionRepository(self.session, self.tenant_id).scopes_for(
                channel, list(hashes.values())
            )
            self._suppressed.update(found)
        if self._check_consent:
            consents = await ConsentRepository(self.session, self.tenant_id).latest_for(
                channel, hashes.values()
            )
            self._consents.update(consents)

    @property
    def needs_check(self) -> bool:
        """False when no recipient can be stopped (nothing suppressed, no consent rule): skip the loop."""
        return self._check_suppression or self._check_consent or self._check_flow or self._check_daily

    @property
    def needs_region(self) -> bool:
        """Whether :meth:`check` looks at the recipient's region (only marketing's consent rules do)."""
        return self._check_consent

    def check(self, key: str, region: str | None = None) -> tuple[str, str] | None:
        """``None`` when the recipient may be sent to, else ``(status, error)``. Call :meth:`load` first."""
        if not self.needs_check:
            return None
        if self._check_flow:
            used = self._flow.get(key)
            limits = self.settings.otp_limits
            if used is not None and (
                used[0] >= limits.per_minute or used[1] >= limits.per_hour or used[2] >= limits.per_day
            ):
                return "rejected", RATE_LIMITED
        if self._check_suppression or self._check_consent:
            verdict = self._check_lists(key, region)
            if verdict is not None:
                return verdict
        if self._check_daily and key in self._at_daily_limit:
            return "rejected", RATE_LIMITED
        return None

    def _check_lists(self, key: str, region: str | None) -> tuple[str, str] | None:
        """Suppression list and consent."""
        digest = self._hashes[key]
        hit = self._suppressed.get(digest)
        if hit is not None:
            scope, _, reason = hit.partition(":")
            if suppression_applies(self.category, scope):
                return "suppressed", SUPPRESSION_MESSAGES.get(reason, "recipient suppressed")
        if self.category != "marketing":
            return None
        consent = self._consents.get(digest)
        if (
            self.channel == "sms"
            and key.startswith("+1")  # S1 names every +1 number: US territories share the plan
            and not (consent is not None and consent.status == "opted_in" and consent.written)
        ):
            return "rejected", NO_WRITTEN_CONSENT
        authorized = (
            consent is not None and consent.status == "opted_in" and consent.basis in ("opt_in", "written")
        )
        if self.channel == "email" and not authorized and is_wireless_address(key):
            return "rejected", NO_WIRELESS_AUTHORIZATION  # 47 CFR 64.3100 (C10), whatever the region
        if not _consent_ok(consent, consent_policy_for(self.settings, region)):
            return "rejected", NO_CONSENT
        if self.channel == "email" and not self.settings.ad_disclosure and not authorized:
            # CAN-SPAM 7704(a)(5)(A)(i): an ad says it is one, unless the recipient opted in.
            return "rejected", NO_AD_DISCLOSURE
        return None
