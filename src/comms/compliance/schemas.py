"""Request shapes of the compliance API."""

from __future__ import annotations

from typing import Literal

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field

from comms.messages.schemas import Channel


class SuppressionCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    channel: Channel
    address: str = Field(min_length=1, max_length=320, examples=["ann@example.com"])
    reason: Literal["unsubscribed", "hard_bounce", "complaint", "manual"] = "manual"


class ConsentCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    channel: Channel
    address: str = Field(min_length=1, max_length=320)
    status: Literal["opted_in", "opted_out"]
    basis: Literal["opt_in", "soft_opt_in", "written"] | None = None
    source: str | None = Field(
        default=None, max_length=200, description="Where it was given: a URL, 'sale', ..."
    )
    wording_version: str | None = Field(default=None, max_length=100)
    written: bool = Field(default=False, description="Signed written consent (US TCPA for marketing SMS).")
    collected_with_optout: bool = Field(default=False, description="An opt-out was offered at collection.")
    ip: str | None = Field(
        default=None, max_length=64, description="The person's IP address when they consented."
    )
    collected_at: AwareDatetime | None = Field(
        default=None,
        description="When the person gave it (ISO 8601 with a zone). An opt-in lifts an earlier "
        "unsubscribe, STOP or objection of the person's own only when collected after it: without "
        "this time, or with an earlier one (a CRM syncing old records), the opt-out stays.",
    )
    send_confirmation: bool | None = Field(
        default=None,
        description="SMS opt-ins: send the opt-in confirmation message CTIA asks for (brand, "
        "frequency, rates, HELP and STOP). Unset: sent for a new opt-in (none on record, or one "
        "that lifts an opt-out) whose collected_at is within the last hour; without collected_at "
        "(an import) nothing is sent. true: sent; false: never. Either way only when a marketing SMS "
        "may go to the number now (consent, written consent for +1 numbers, not suppressed).",
    )


class ContactAddress(BaseModel):
    model_config = ConfigDict(extra="forbid")

    channel: Channel
    address: str = Field(min_length=1, max_length=320)


class ContactLinks(BaseModel):
    """``PUT /communication/contacts/{contact}``: the person's addresses, replacing any linked
    before. An objection to direct marketing on one of them covers them all (E6)."""

    model_config = ConfigDict(extra="forbid")

    addresses: list[ContactAddress] = Field(min_length=1, max_length=20)


class ErasureCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    channel: Channel
    address: str = Field(min_length=1, max_length=320)


class DomainVerify(BaseModel):
    model_config = ConfigDict(extra="forbid")

    dkim_selectors: list[str] | None = Field(
        default=None,
        min_length=1,
        max_length=10,
        description="DKIM selectors to look up (s1 -> s1._domainkey.<domain>); default: those of the "
        "domain's last check.",
        examples=[["s1"]],
    )


class MailtoUnsubscribe(BaseModel):
    """An inbound email to the ``mailto:`` of a List-Unsubscribe header, as an inbound-mail
    service (SES, SendGrid Inbound Parse, Mailgun routes, a procmail script) reports it."""

    model_config = ConfigDict(extra="forbid")

    recipient: str = Field(
        min_length=3, max_length=320, description="The address it was sent to: unsub+TOKEN@domain."
    )
    sender: str | None = Field(default=None, max_length=320, description="Its From address.")
