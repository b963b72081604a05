"""A tenant's own settings (``GET|PUT /communication/settings``), stored as JSON on the tenant."""

from __future__ import annotations

import re
from typing import Any, Literal

import phonenumbers
from pydantic import BaseModel, ConfigDict, Field, field_validator

from comms.kit.domains import normalize_domain

ConsentPolicy = Literal["opt_in", "soft_opt_in", "none"]
Stream = Literal["verification", "transactional", "announcement", "marketing"]
ALL_STREAMS: tuple[Stream, ...] = ("verification", "transactional", "announcement", "marketing")
_HOURS = re.compile(r"^([01]\d|2[0-3]):[0-5]\d-([01]\d|2[0-4]):[0-5]\d$")


class OtpLimits(BaseModel):
    """Verification SMS a number may get, per window (Aliyun's defaults: 1/min, 5/h, 10/day)."""

    model_config = ConfigDict(extra="forbid")

    per_minute: int = Field(default=1, ge=1, le=1_000)
    per_hour: int = Field(default=5, ge=1, le=10_000)
    per_day: int = Field(default=10, ge=1, le=100_000)


class SenderIdentity(BaseModel):
    """A sender identity bound to streams (categories): Gmail and Yahoo want subscription mail and
    transactional mail from separate senders (COMPLIANCE.md K2). A plain string in
    ``sender_identities`` is an identity for every stream."""

    model_config = ConfigDict(extra="forbid")

    address: str = Field(
        min_length=1, max_length=320, description="From-address (with '@') or SMS sender id."
    )
    streams: list[Stream] = Field(
        default_factory=lambda: list(ALL_STREAMS),
        min_length=1,
        description='The categories this identity may send: e.g. ["marketing", "announcement"] or '
        '["transactional", "verification"].',
    )

    @field_validator("streams")
    @classmethod
    def _unique(cls, value: list[Stream]) -> list[Stream]:
        return list(dict.fromkeys(value))


class RecordCheck(BaseModel):
    """One DNS record's verdict (SPF, DKIM or DMARC)."""

    ok: bool
    detail: str
    record: str | None = Field(default=None, description="The TXT record that was found, if any.")


class DomainAuthentication(BaseModel):
    """The last DNS check of a sending domain (``POST /communication/settings/domains/{d}/verify``)."""

    verified: bool = Field(description="SPF, DKIM and DMARC all passed.")
    spf: RecordCheck
    dkim: RecordCheck
    dmarc: RecordCheck
    dkim_selectors: list[str]
    checked_at: str

    def missing(self) -> list[str]:
        """The names of the records that did not pass: "SPF", "DKIM", "DMARC"."""
        checks = {"SPF": self.spf, "DKIM": self.dkim, "DMARC": self.dmarc}
        return [name for name, check in checks.items() if not check.ok]


# Settings that only comms writes (a PUT may repeat their current value, never change it).
READ_ONLY_FIELDS = {"email_domains": "set by POST /communication/settings/domains/{domain}/verify"}


class TenantSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    default_region: str = Field(
        default="CN", description="ISO 3166 region for national-format phone numbers."
    )
    postal_address: str | None = Field(
        default=None, description="Printed in every marketing email (CAN-SPAM)."
    )
    sender_identities: list[str | SenderIdentity] = Field(
        default_factory=list,
        description="From-addresses (with '@') and SMS sender ids the tenant may use: a string (any "
        'category) or {"address", "streams"} to keep marketing and transactional senders apart. '
        "The first one for a request's channel and category is its default sender.",
    )
    sms_signature: str | None = Field(default=None, description="Brand signature, e.g. 阿里云 -> 【阿里云】.")
    sms_opt_out_text: str | None = Field(default=None, description="Appended to marketing SMS.")
    ad_disclosure: str | None = Field(default=None, description="Ad identification text for marketing email.")
    consent_policy: dict[str, ConsentPolicy] = Field(
        default_factory=dict,
        description="Region (ISO code, or EU for the EEA and UK, or * for the rest) -> basis required "
        "for marketing.",
    )
    quiet_hours: dict[str, str] = Field(default_factory=dict, description='Country -> "08:00-21:00" local.')
    content_retention_days: int = Field(default=30, ge=1, le=3650)
    log_retention_days: int = Field(
        default=365,
        ge=1,
        le=3650,
        description="After this many days a log item keeps only a masked recipient and a salted hash "
        "of it (its content goes too): the log still says what happened, no longer to whom.",
    )
    complaint_rate_threshold: float = Field(
        default=0.002, gt=0, le=1, description="Marketing email pauses at this complaint rate (0.002 = 0.2%)."
    )
    complaint_rate_min_volume: int = Field(
        default=1000,
        ge=1,
        le=10**9,
        description="Emails sent in the window before the complaint rate counts.",
    )
    otp_limits: OtpLimits = Field(
        default_factory=lambda: OtpLimits(), description="Verification SMS per number (against SMS pumping)."
    )
    sms_daily_limit: int = Field(
        default=50,
        ge=1,
        le=100_000,
        description="Notification and promotional (non-verification) SMS one number may get from the "
        "tenant in 24 hours; more are rejected as 'rate limited'.",
    )
    unsubscribe_mailto_domain: str | None = Field(
        default=None,
        description="With it, List-Unsubscribe also offers <mailto:unsub+TOKEN@this domain>; mail to it "
        "must reach POST /communication/unsubscribe/mailto.",
    )
    require_dns_authentication: bool = Field(
        default=True,
        description="Marketing email only from a domain whose SPF, DKIM and DMARC passed the check of "
        "POST /communication/settings/domains/{domain}/verify.",
    )
    email_domains: dict[str, DomainAuthentication] = Field(
        default_factory=dict, description="Read-only: the last DNS check of each sending domain."
    )

    @field_validator("default_region")
    @classmethod
    def _region(cls, value: str) -> str:
        value = value.upper()
        if not re.fullmatch(r"[A-Z]{2}", value):
            raise ValueError("must be a two-letter ISO 3166 region code")
        # Not whether it has a numbering plan: settings are validated on every use, and a tenant
        # stored before that check must not be locked out (see unplanned_region).
        return value

    @field_validator("quiet_hours")
    @classmethod
    def _hours(cls, value: dict[str, str]) -> dict[str, str]:
        for country, window in value.items():
            if not _HOURS.match(window):
                raise ValueError(f"{country}: expected HH:MM-HH:MM, got {window!r}")
        return {_region_key(k, allow_groups=False): v for k, v in value.items()}

    @field_validator("consent_policy")
    @classmethod
    def _policy(cls, value: dict[str, ConsentPolicy]) -> dict[str, ConsentPolicy]:
        return {_region_key(k, allow_groups=True): v for k, v in value.items()}

    @field_validator("unsubscribe_mailto_domain")
    @classmethod
    def _mailto_domain(cls, value: str | None) -> str | None:
        if value is None:
            return None
        return normalize_domain(value)

    def _identities(self) -> list[tuple[str, tuple[str, ...]]]:
        return [
            (i, ALL_STREAMS) if isinstance(i, str) else (i.address, tuple(i.streams))
            for i in self.sender_identities
        ]

    def email_senders(self) -> list[str]:
        """Every email identity, whatever its streams."""
        return [a for a, _ in self._identities() if "@" in a]

    def sms_senders(self) -> list[str]:
        return [a for a, _ in self._identities() if "@" not in a]

    def senders_for(self, channel: str, category: str) -> list[str]:
        """The identities of a channel declared for a category, in the tenant's order."""
        email = channel == "email"
        return [a for a, streams in self._identities() if ("@" in a) == email and category in streams]

    def streams_of(self, channel: str, address: str) -> tuple[str, ...] | None:
        """The streams of a registered identity (matched case-insensitively), None if unknown."""
        email, wanted = channel == "email", address.lower()
        for a, streams in self._identities():
            if ("@" in a) == email and a.lower() == wanted:
                return streams
        return None


def _region_key(key: str, *, allow_groups: bool) -> str:
    """Regions are matched upper-case: "de" means DE. Anything else is refused, not ignored."""
    upper = key.strip().upper()
    if re.fullmatch(r"[A-Z]{2}", upper) or (allow_groups and upper in ("EU", "*")):
        return upper
    groups = ", EU (the EEA and UK) or *" if allow_groups else ""
    raise ValueError(f"{key!r} is not a region: use a two-letter ISO 3166 code{groups}")


def unplanned_region(value: str) -> str | None:
    """Why ``value`` cannot be a tenant's default region (national numbers are read in it), or
    None. Checked where a region is set (PUT /settings, comms tenant create), not on every load."""
    region = value.strip().upper()
    if re.fullmatch(r"[A-Z]{2}", region) and region not in phonenumbers.SUPPORTED_REGIONS:
        return f"{region} is not a region with a phone numbering plan (e.g. CN, US, DE)"
    return None


def load_settings(raw: dict[str, Any] | None) -> TenantSettings:
    return TenantSettings.model_validate(raw or {})
