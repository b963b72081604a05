"""Salted hashes of addresses: suppression and consent rows are keyed by them, so an opt-out
survives erasure of the address itself (GDPR Art. 17 vs ePrivacy; COMPLIANCE.md E7)."""

from __future__ import annotations

import hashlib


def address_hash(salt: str, channel: str, key: str) -> str:
    return hashlib.sha256(f"{salt}:{channel}:{key}".encode()).hexdigest()
