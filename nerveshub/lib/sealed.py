"""Encryption at rest for secrets the hub must read back in clear.

Shared secrets cannot be hashed: verifying an NH1 signature needs the secret
itself. They are sealed with Fernet (AES-128-CBC + HMAC-SHA256) under a key taken
from SECRETS_ENCRYPTION_KEY, or derived from SECRET_KEY when that is unset.
"""

from __future__ import annotations

import base64
from functools import cache

from cryptography.fernet import Fernet, InvalidToken
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from django.conf import settings


class SealError(Exception):
    """The stored value cannot be opened with the configured key."""


@cache
def _fernet(key_material: str) -> Fernet:
    derived = HKDF(algorithm=hashes.SHA256(), length=32, salt=b"nerveshub-sealed-v1", info=b"shared-secrets").derive(
        key_material.encode()
    )
    return Fernet(base64.urlsafe_b64encode(derived))


def _key_material() -> str:
    return str(getattr(settings, "SECRETS_ENCRYPTION_KEY", None) or settings.SECRET_KEY)


def seal(plaintext: str) -> str:
    return _fernet(_key_material()).encrypt(plaintext.encode()).decode()


def unseal(token: str) -> str:
    try:
        return _fernet(_key_material()).decrypt(token.encode()).decode()
    except InvalidToken:
        raise SealError("sealed value does not open with the configured key") from None
