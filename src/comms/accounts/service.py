"""Provider accounts: a tenant's credentials at a vendor, validated by the vendor's own config model.

Secret fields (the provider class names them) are encrypted with COMMS_SECRET_KEY before they
are stored and never returned by the API; a PUT that leaves one out keeps the stored value.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any
from urllib.parse import urlencode

from pydantic import BaseModel, ValidationError

from comms.errors import FieldError, ValidationFailed, pydantic_field, pydantic_message
from comms.kit.secretbox import SecretBox
from comms.providers.base import Provider
from comms.providers.registry import PROVIDERS


def provider_class(name: str, channel: str) -> type[Provider]:
    cls = PROVIDERS.get(name)
    if cls is None:
        raise ValidationFailed.single(
            "provider", f"unknown provider {name!r}: one of {', '.join(sorted(PROVIDERS))}"
        )
    if channel not in cls.channels:
        raise ValidationFailed.single("channel", f"{name} does not carry {channel}")
    return cls


def callback_urls(
    public_url: str, provider: str, account_id: str, query: Mapping[str, str] | None = None
) -> dict[str, str]:
    """Where an account's vendor reports receipts and inbound messages (``query``: what the
    vendor must send back, e.g. the secret token of vendors that sign nothing)."""
    base = f"{public_url.rstrip('/')}/webhooks/{provider}/{account_id}"
    suffix = f"?{urlencode(query)}" if query else ""
    return {"status": f"{base}/status{suffix}", "inbound": f"{base}/inbound{suffix}"}


def validate_config(cls: type[Provider], config: dict[str, Any]) -> BaseModel:
    try:
        return cls.Config.model_validate(config)
    except ValidationError as exc:
        errors = [
            FieldError(pydantic_field(e["loc"], prefix=("config",)), pydantic_message(e))
            for e in exc.errors()
        ]
        raise ValidationFailed(errors[0].field + ": " + errors[0].message, errors) from None


def seal(cls: type[Provider], config: BaseModel, box: SecretBox) -> dict[str, Any]:
    """The config as stored: secret fields encrypted."""
    data = config.model_dump(mode="json")
    for field in cls.secret_fields:
        if data.get(field) is not None:
            data[field] = box.encrypt(str(data[field]))
    return data


def unseal(cls: type[Provider], stored: dict[str, Any], box: SecretBox) -> BaseModel:
    """The config as the provider uses it: secrets decrypted, validated again."""
    return cls.Config.model_validate(_opened(cls, stored, box))


def _opened(cls: type[Provider], stored: dict[str, Any], box: SecretBox) -> dict[str, Any]:
    """The stored config with its secrets decrypted, not validated."""
    data = dict(stored)
    for field in cls.secret_fields:
        value = data.get(field)
        if isinstance(value, str):
            data[field] = box.decrypt(value)
    return data


def public_view(cls: type[Provider], stored: dict[str, Any]) -> dict[str, Any]:
    """The config as the API shows it: secret fields left out (write-only)."""
    return {k: v for k, v in stored.items() if k not in cls.secret_fields}


def merge_for_update(
    cls: type[Provider], stored: dict[str, Any], changes: dict[str, Any], box: SecretBox
) -> dict[str, Any]:
    """Changes over the stored config; secrets not given keep their stored (decrypted) value.
    Not validated here (the caller validates the result): a stored config that a newer rule
    refuses must still be fixable by the update that changes the refused field."""
    current = _opened(cls, stored, box)
    current.update(changes)
    return current
