"""Request shapes of the compliance API."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

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


class ErasureCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    channel: Channel
    address: str = Field(min_length=1, max_length=320)
