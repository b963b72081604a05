"""API key scopes (CONTRACT.md "Command line")."""

from __future__ import annotations

from enum import StrEnum


class Scope(StrEnum):
    SEND = "send"
    LOGS_READ = "logs:read"
    TEMPLATES_WRITE = "templates:write"
    SUPPRESSIONS_WRITE = "suppressions:write"
    PII_READ = "pii:read"
    ADMIN = "admin"


ALL_SCOPES = frozenset(Scope)
DEFAULT_SCOPES = frozenset(s for s in Scope if s is not Scope.PII_READ)
