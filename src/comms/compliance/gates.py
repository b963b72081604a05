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
"""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy.ext.asyncio import AsyncSession

from comms.compliance.addresses import address_hash
from comms.compliance.repository import ConsentRepository, SuppressionRepository
from comms.compliance.settings import ConsentPolicy, TenantSettings
from comms.models import Consent

EEA_AND_UK = frozenset(
    "AT BE BG HR CY CZ DK EE FI FR DE GR HU IE IT LV LT LU MT NL PL PT RO SK SI ES SE IS LI NO GB".split()  # noqa: SIM905
)
# Used where the tenant set no policy for a region: the strictest reading of the law there.
DEFAULT_CONSENT_POLICY: dict[str, ConsentPolicy] = {"EU": "soft_opt_in", "CN": "opt_in", "*": "none"}

SUPPRESSION_MESSAGES = {
    "unsubscribed": "recipient unsubscribed",
    "stop": "recipient unsubscribed",
    "objection": "recipient unsubscribed",
    "hard_bounce": "recipient address bounced",
    "complaint": "recipient complained",
    "manual": "recipient suppressed",
}
NO_CONSENT = "no marketing consent"
NO_WRITTEN_CONSENT = "no prior express written consent"


def consent_policy_for(settings: TenantSettings, region: str | None) -> ConsentPolicy:
    region = (region or settings.default_region).upper()
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
    return (
        policy == "soft_opt_in"
        and consent.basis == "soft_opt_in"
        and consent.source == "sale"
        and consent.collected_with_optout
    )


class AcceptanceGate:
    """Decides, per recipient, ``None`` (may be queued) or ``(status, error)``."""

    def __init__(
        self,
        channel: str,
        category: str,
        settings: TenantSettings,
        salt: str,
        suppressed: dict[str, str],
        consents: dict[str, Consent],
        hashes: dict[str, str],
    ) -> None:
        self.channel = channel
        self.category = category
        self.settings = settings
        self.salt = salt
        self._suppressed = suppressed
        self._consents = consents
        self._hashes = hashes

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
        keys: Sequence[str],
    ) -> AcceptanceGate:
        hashes: dict[str, str] = {}
        suppressed: dict[str, str] = {}
        consents: dict[str, Consent] = {}
        check_suppression = category != "verification"
        check_consent = category == "marketing"
        suppressions = SuppressionRepository(session, tenant_id)
        if check_suppression and await suppressions.count(channel) == 0:
            check_suppression = False
        if check_suppression or check_consent:
            hashes = {key: address_hash(salt, channel, key) for key in keys}
        if check_suppression:
            suppressed = await suppressions.scopes_for(channel, list(hashes.values()))
        if check_consent:
            consents = await ConsentRepository(session, tenant_id).latest_for(channel, hashes.values())
        return cls(channel, category, settings, salt, suppressed, consents, hashes)

    @property
    def needs_check(self) -> bool:
        """False when no recipient can be stopped (nothing suppressed, no consent rule): skip the loop."""
        return bool(self._hashes)

    @property
    def needs_region(self) -> bool:
        """Whether :meth:`check` looks at the recipient's region (only marketing's consent rules do)."""
        return bool(self._hashes) and self.category == "marketing"

    def check(self, key: str, region: str | None = None) -> tuple[str, str] | None:
        """``None`` when the recipient may be sent to, else ``(status, error)``."""
        if not self._hashes:
            return None
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
            and region == "US"
            and not (consent is not None and consent.status == "opted_in" and consent.written)
        ):
            return "rejected", NO_WRITTEN_CONSENT
        if not _consent_ok(consent, consent_policy_for(self.settings, region)):
            return "rejected", NO_CONSENT
        return None
