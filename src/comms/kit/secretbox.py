"""Symmetric encryption at rest for values that must be kept until use but never shown:
secret template variables (OTPs) until the message is sent, provider credentials.

Fernet (AES-128-CBC + HMAC-SHA256) from ``cryptography``, keyed from COMMS_SECRET_KEY.
"""

from __future__ import annotations

import base64
import hashlib

from cryptography.fernet import Fernet, InvalidToken

_PREFIX = "enc:v1:"


class SecretBox:
    def __init__(self, secret_key: str) -> None:
        derived = hashlib.sha256(b"comms-secretbox:" + secret_key.encode()).digest()
        self._fernet = Fernet(base64.urlsafe_b64encode(derived))

    def encrypt(self, plaintext: str) -> str:
        return _PREFIX + self._fernet.encrypt(plaintext.encode()).decode()

    def decrypt(self, value: str) -> str:
        if not value.startswith(_PREFIX):
            return value
        try:
            return self._fernet.decrypt(value[len(_PREFIX) :].encode()).decode()
        except InvalidToken as exc:
            raise ValueError("secret could not be decrypted (was COMMS_SECRET_KEY changed?)") from exc

    @staticmethod
    def is_encrypted(value: str) -> bool:
        return value.startswith(_PREFIX)
