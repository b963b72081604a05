"""How pydantic's error locations become the envelope's field names."""

from __future__ import annotations

import pytest

import comms.compliance.settings  # noqa: F401  (defines SenderIdentity)
from comms.errors import pydantic_field


@pytest.mark.parametrize(
    ("loc", "prefix", "field"),
    [
        (("sender_identities", 0, "str"), (), "sender_identities.0"),  # the union member tried
        (("sender_identities", 0, "SenderIdentity", "address"), (), "sender_identities.0.address"),
        (("recipients", 1, "function-after[check()]"), (), "recipients.1"),  # a validator's wrapper
        (("quiet_hours", "US"), (), "quiet_hours.US"),  # a dict key, not a type: kept
        (("quiet_hours", "Us"), (), "quiet_hours.Us"),  # even one that looks like a class name
        (("otp_limits", "per_day"), (), "otp_limits.per_day"),
        ((), ("config",), "config"),  # a model-level error of a provider's config
        (("url",), ("config",), "config.url"),
    ],
)
def test_error_locations_name_the_field(loc: tuple[object, ...], prefix: tuple[str, ...], field: str) -> None:
    assert pydantic_field(loc, prefix) == field
