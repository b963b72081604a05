"""A tenant's own settings (``GET|PUT /communication/settings``), stored as JSON on the tenant."""

from __future__ import annotations

import re
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

ConsentPolicy = Literal["opt_in", "soft_opt_in", "none"]
_HOURS = re.compile(r"^([01]\d|2[0-3]):[0-5]\d-([01]\d|2[0-4]):[0-5]\d$")


class OtpLimits(BaseModel):
    """Verification SMS a number may get, per window (Aliyun's defaults: 1/min, 5/h, 10/day)."""

    model_config = ConfigDict(extra="forbid")

    per_minute: int = Field(default=1, ge=1)
    per_hour: int = Field(default=5, ge=1)
    per_day: int = Field(default=10, ge=1)


class TenantSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    default_region: str = Field(
        default="CN", description="ISO 3166 region for national-format phone numbers."
    )
    postal_address: str | None = Field(
        default=None, description="Printed in every marketing email (CAN-SPAM)."
    )
    sender_identities: list[str] = Field(
        default_factory=list,
        description="From-addresses (with '@') and SMS sender ids the tenant may use; the first email one "
        "is the default From.",
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
    complaint_rate_threshold: float = Field(
        default=0.002, gt=0, le=1, description="Marketing email pauses at this complaint rate (0.002 = 0.2%)."
    )
    complaint_rate_min_volume: int = Field(
        default=1000, ge=1, description="Emails sent in the window before the complaint rate counts."
    )
    otp_limits: OtpLimits = Field(
        default_factory=lambda: OtpLimits(), description="Verification SMS per number (against SMS pumping)."
    )

    @field_validator("default_region")
    @classmethod
    def _region(cls, value: str) -> str:
        value = value.upper()
        if not re.fullmatch(r"[A-Z]{2}", value):
            raise ValueError("must be a two-letter ISO 3166 region code")
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

    def email_senders(self) -> list[str]:
        return [s for s in self.sender_identities if "@" in s]

    def sms_senders(self) -> list[str]:
        return [s for s in self.sender_identities if "@" not in s]


def _region_key(key: str, *, allow_groups: bool) -> str:
    """Regions are matched upper-case: "de" means DE. Anything else is refused, not ignored."""
    upper = key.strip().upper()
    if re.fullmatch(r"[A-Z]{2}", upper) or (allow_groups and upper in ("EU", "*")):
        return upper
    groups = ", EU (the EEA and UK) or *" if allow_groups else ""
    raise ValueError(f"{key!r} is not a region: use a two-letter ISO 3166 code{groups}")


def load_settings(raw: dict[str, Any] | None) -> TenantSettings:
    return TenantSettings.model_validate(raw or {})
