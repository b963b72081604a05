"""Provider accounts: a tenant's credentials at a vendor, validated by the vendor's own config model.

Secret fields (the provider class names them) are encrypted with COMMS_SECRET_KEY before they
are stored and never returned by the API; a PUT that leaves one out keeps the stored value.

Vendors that sign nothing they push (Aliyun, Tencent, Kannel) authenticate their callbacks by a
secret ``callback_token`` in the callback URLs (``Provider.callback_query``). The contract's
config fields do not include it: when an account is created (or a config update leaves it unset,
as on an Aliyun account stored before this rule) without one, comms generates a random one and
stores it like any other secret; a tenant may still set its own.

A config field with alternative names (a pydantic ``AliasChoices``, e.g. Kannel's ``from`` and the
older ``from_number``) is stored and shown under its serialization alias; a stored config under
an older name still loads, is shown under the current one, and an update naming either replaces it.
"""

from __future__ import annotations

import secrets
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlencode

from pydantic import AliasChoices, BaseModel, ValidationError

from comms.errors import FieldError, ValidationFailed, pydantic_field, pydantic_message
from comms.kit.netguard import private_host
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


# The secret that vendors signing nothing echo back in the callback URL (Provider.callback_query).
CALLBACK_TOKEN = "callback_token"
CALLBACK_TOKEN_BYTES = 32  # 256 random bits: 43 characters of A-Za-z0-9_-


def generated_secret_fields(cls: type[Provider]) -> frozenset[str]:
    """The secret fields comms fills in itself when a config leaves them unset: the
    ``callback_token`` of providers whose callbacks a URL token authenticates."""
    if CALLBACK_TOKEN in cls.secret_fields and CALLBACK_TOKEN in cls.Config.model_fields:
        return frozenset({CALLBACK_TOKEN})
    return frozenset()


def new_callback_token() -> str:
    return secrets.token_urlsafe(CALLBACK_TOKEN_BYTES)


def with_generated_secrets(cls: type[Provider], config: dict[str, Any]) -> dict[str, Any]:
    """``config`` (not yet validated) with each of :func:`generated_secret_fields` that is absent
    or null set to a new random value; one already set (given, or kept from the stored config
    by :func:`merge_for_update`) is never replaced."""
    missing = [f for f in sorted(generated_secret_fields(cls)) if config.get(f) is None]
    if not missing:
        return config
    return {**config, **{field: new_callback_token() for field in missing}}


def _alias_names(cls: type[Provider]) -> list[tuple[str, tuple[str, ...]]]:
    """(the name a field is stored and shown under, every name it is read from) for each config
    field with alternative input names."""
    names = []
    for field_name, info in cls.Config.model_fields.items():
        choices = info.validation_alias
        if isinstance(choices, AliasChoices):
            read = tuple(c for c in choices.choices if isinstance(c, str))
            names.append((info.serialization_alias or info.alias or field_name, read))
    return names


def validate_config(cls: type[Provider], config: dict[str, Any]) -> BaseModel:
    try:
        return cls.Config.model_validate(config)
    except ValidationError as exc:
        errors = [
            FieldError(pydantic_field(e["loc"], prefix=("config",)), pydantic_message(e))
            for e in exc.errors()
        ]
        raise ValidationFailed(errors[0].field + ": " + errors[0].message, errors) from None
    except Exception as exc:
        # A validator that met something its library refuses in a way of its own (a key of an
        # unknown algorithm, a certificate that is not text): still the request's fault, a 422.
        # The value itself is never quoted (it may be a key).
        raise ValidationFailed.single("config", f"a value could not be read ({type(exc).__name__})") from None


# The SES receipt options that let a certificate be fetched from elsewhere than Amazon (tests,
# private deployments): not for a deployment that keeps providers off private networks.
_AMAZON_CERT_HOSTS = frozenset({".amazonaws.com", ".amazonaws.com.cn"})


def refuse_private_endpoints(config: BaseModel) -> None:
    """COMMS_PROVIDER_ALLOW_PRIVATE=false: no URL or host in ``config`` may name a private,
    loopback or link-local address (names are checked again as they are resolved)."""
    for name, value in config.model_dump(by_alias=True).items():
        if not isinstance(value, str) or not value:
            continue
        if "://" in value:
            url = value
        elif name == "host":  # an SMTP relay
            url = f"//{value}"
        else:
            continue
        try:
            host = private_host(url)
        except ValueError:  # unreadable: the provider's own model refused it already
            continue
        if host is not None:
            raise ValidationFailed.single(f"config.{name}", f"{host} is not a public address")
    data = config.model_dump()
    if (
        data.get("sns_allow_http")
        or data.get("sns_cert_host_suffix", ".amazonaws.com") not in _AMAZON_CERT_HOSTS
    ):
        raise ValidationFailed.single(
            "config.sns_cert_host_suffix", "certificates come from Amazon only on this deployment"
        )


def seal(cls: type[Provider], config: BaseModel, box: SecretBox) -> dict[str, Any]:
    """The config as stored: secret fields encrypted."""
    data = config.model_dump(mode="json")
    for field in cls.secret_fields:
        if data.get(field) is not None:
            data[field] = box.encrypt(str(data[field]))
    return data


def unseal(cls: type[Provider], stored: dict[str, Any], box: SecretBox) -> BaseModel:
    """The config as the provider uses it: secrets decrypted, validated again. A stored config that
    a newer rule refuses raises a ValueError naming the fields only: pydantic's own message quotes
    the input, here a decrypted secret, and it would go to the log."""
    try:
        return cls.Config.model_validate(_opened(cls, stored, box))
    except ValidationError as exc:
        fields = ", ".join(sorted({pydantic_field(e["loc"], prefix=("config",)) for e in exc.errors()}))
        raise ValueError(f"stored provider config no longer valid: {fields}") from None


def _opened(
    cls: type[Provider], stored: dict[str, Any], box: SecretBox, replaced: frozenset[str] = frozenset()
) -> dict[str, Any]:
    """The stored config with its secrets decrypted (but those ``replaced``), not validated."""
    data = dict(stored)
    for field in cls.secret_fields:
        value = data.get(field)
        if isinstance(value, str) and field not in replaced:
            data[field] = box.decrypt(value)
    return data


def unreadable_secrets(cls: type[Provider], stored: dict[str, Any], box: SecretBox) -> list[str]:
    """The secret fields of a stored config that this process's key cannot decrypt (the
    COMMS_SECRET_KEY changed since they were stored): the tenant must give them again."""
    bad = []
    for field in cls.secret_fields:
        value = stored.get(field)
        if isinstance(value, str):
            try:
                box.decrypt(value)
            except ValueError:
                bad.append(field)
    return bad


def public_view(cls: type[Provider], stored: dict[str, Any]) -> dict[str, Any]:
    """The config as the API shows it: secret fields left out (write-only), a field stored under
    an older name shown under its current one."""
    view = {k: v for k, v in stored.items() if k not in cls.secret_fields}
    for current, names in _alias_names(cls):
        for name in names:
            if name != current and name in view:
                value = view.pop(name)
                view.setdefault(current, value)
    return view


def merge_for_update(
    cls: type[Provider], stored: dict[str, Any], changes: dict[str, Any], box: SecretBox
) -> dict[str, Any]:
    """Changes over the stored config; secrets not given keep their stored (decrypted) value.
    Not validated here (the caller validates the result): a stored config that a newer rule
    refuses must still be fixable by the update that changes the refused field."""
    # Only the secrets kept are decrypted: one the change gives again may be one this process's
    # key can no longer read (COMMS_SECRET_KEY changed), which is what the update is for.
    given = frozenset(
        name for _, names in _alias_names(cls) if any(n in changes for n in names) for name in names
    )
    try:
        current = _opened(cls, stored, box, replaced=given | frozenset(changes))
    except ValueError:
        missing = [f for f in unreadable_secrets(cls, stored, box) if f not in changes and f not in given]
        raise ValidationFailed(
            "stored secrets cannot be decrypted with the current COMMS_SECRET_KEY; give them again",
            [
                FieldError(
                    f"config.{f}", "cannot be decrypted with the current COMMS_SECRET_KEY; give it again"
                )
                for f in missing
            ],
        ) from None
    for _, names in _alias_names(cls):
        # A change under any of a field's names replaces the stored value under any other.
        if any(name in changes for name in names):
            for name in names:
                current.pop(name, None)
    current.update(changes)
    return current
