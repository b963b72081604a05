"""Stored template request/response shapes."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

from comms.messages.schemas import Category, Channel
from comms.templates.rendering import TemplateError, compile_template

CODE_PATTERN = r"^[A-Za-z0-9_.\-]{1,100}$"


def _compiles(value: str | None, html: bool = False) -> str | None:
    if value is not None:
        try:
            compile_template(value, html)
        except TemplateError as exc:
            raise ValueError(str(exc)) from None
    return value


class TemplateFields(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str | None = Field(default=None, max_length=200)
    subject: str | None = None
    html: str | None = Field(default=None, description="Optional HTML part for email (autoescaped).")
    secret_variables: list[str] | None = Field(
        default=None,
        description="Variables whose values are redacted in stored content (plus code, otp, password).",
    )
    provider_templates: dict[str, dict[str, Any]] | None = Field(
        default=None, examples=[{"aliyun": {"template_code": "SMS_123456", "sign_name": "Acme"}}]
    )
    contains_promo: bool | None = Field(
        default=None, description="Promotional content: treated as marketing."
    )

    @field_validator("subject")
    @classmethod
    def _subject(cls, value: str | None) -> str | None:
        if value is not None and ("\r" in value or "\n" in value):
            raise ValueError("subject must be a single line")
        return _compiles(value)

    @field_validator("html")
    @classmethod
    def _html(cls, value: str | None) -> str | None:
        return _compiles(value, html=True)


class TemplateCreate(TemplateFields):
    code: str = Field(pattern=CODE_PATTERN, examples=["verify_code"])
    channel: Channel
    category: Category = Category.MARKETING
    content: str = Field(min_length=1, examples=["Your verification code is {{ code }}"])

    @field_validator("content")
    @classmethod
    def _content(cls, value: str) -> str:
        _compiles(value)
        return value


class TemplateUpdate(TemplateFields):
    code: str | None = Field(default=None, pattern=CODE_PATTERN)
    channel: Channel | None = None
    category: Category | None = None
    content: str | None = Field(default=None, min_length=1)

    @field_validator("content")
    @classmethod
    def _content(cls, value: str | None) -> str | None:
        return _compiles(value)


class TemplateResponse(BaseModel):
    id: str
    code: str
    name: str | None
    channel: str
    category: str
    content: str
    subject: str | None
    html: str | None
    secret_variables: list[str]
    provider_templates: dict[str, Any]
    contains_promo: bool
    variables: list[str] = Field(description="The variables the template needs.")
    version: int
    created_at: str
    updated_at: str


class TemplateEnvelope(BaseModel):
    code: int | None = None
    message: str | None = None
    timestamp: str | None = None
    data: TemplateResponse | None = None
