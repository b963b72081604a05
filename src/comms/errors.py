"""The exception tree.

CommsError
├── ApiError                 answered as the envelope with ``status``
│   ├── BadRequest           400 malformed JSON
│   ├── Unauthorized         401
│   ├── Forbidden            403 missing scope
│   ├── NotFound             404 (also for another tenant's objects)
│   ├── Conflict             409
│   ├── PayloadTooLarge      413
│   ├── ValidationFailed     422, with per-field ``errors``
│   ├── RateLimited          429, with ``retry_after``
│   └── Unavailable          503
└── ProviderError            raised by providers for a whole call
    ├── TransientProviderError   retry later (timeouts, 5xx, throttling)
    └── PermanentProviderError   give up (bad credentials, rejected content)
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import cache
from typing import Any


@dataclass(frozen=True, slots=True)
class FieldError:
    field: str
    message: str


class CommsError(Exception):
    """Root of every error comms raises on purpose."""


class ApiError(CommsError):
    status: int = 500

    def __init__(self, message: str, errors: list[FieldError] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.errors = errors or []


class BadRequest(ApiError):
    status = 400


class Unauthorized(ApiError):
    status = 401


class Forbidden(ApiError):
    status = 403


class NotFound(ApiError):
    status = 404


class Conflict(ApiError):
    status = 409


class PayloadTooLarge(ApiError):
    status = 413


class ValidationFailed(ApiError):
    status = 422

    @classmethod
    def single(cls, field: str, message: str) -> ValidationFailed:
        return cls(message, [FieldError(field, message)])


class RateLimited(ApiError):
    status = 429

    def __init__(self, message: str, retry_after: float) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class Unavailable(ApiError):
    status = 503


class ProviderError(CommsError):
    def __init__(self, message: str, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.retry_after = retry_after


class TransientProviderError(ProviderError):
    pass


class PermanentProviderError(ProviderError):
    pass


# What pydantic puts into an error's location besides field names: the member of a union that was
# tried (a type such as "str", or a model's class name) or a validator's wrapper
# ("function-after[...]"). Class names are matched exactly, so a key a user chose is never dropped.
_TYPE_TAG = re.compile(r"^(str|int|float|bool|list|dict|none|[a-z-]+\[.*\])$")


@cache  # asked only while an error is reported, once every model is defined
def _model_names() -> frozenset[str]:
    from pydantic import BaseModel

    names: set[str] = set()
    pending: list[type] = [BaseModel]
    while pending:
        subclasses: list[type] = pending.pop().__subclasses__()
        for sub in subclasses:
            if sub.__name__ not in names:
                names.add(sub.__name__)
                pending.append(sub)
    return frozenset(names)


def _is_tag(part: object) -> bool:
    return isinstance(part, str) and (_TYPE_TAG.match(part) is not None or part in _model_names())


def pydantic_field(loc: Sequence[Any], prefix: Sequence[str] = ()) -> str:
    """An error's location as the envelope names the field: ``sender_identities.0.address``."""
    return ".".join([*prefix, *(str(p) for p in loc if not _is_tag(p))])


def pydantic_message(error: Mapping[str, Any]) -> str:
    """A pydantic error's text for the envelope, without pydantic's "Value error, " prefix (our
    validators' messages are complete sentences of their own)."""
    return str(error.get("msg", "invalid")).removeprefix("Value error, ")
