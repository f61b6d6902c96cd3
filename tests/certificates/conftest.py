"""Certificate fixtures. Keys and certificates are pure objects, made once per
module: P-256 key generation is cheap but not free."""

from __future__ import annotations

import pytest

from certificates import pki


@pytest.fixture(scope="module")
def device_ca() -> pki.Issued:
    return pki.create_ca("Acme Device CA")


@pytest.fixture(scope="module")
def other_ca() -> pki.Issued:
    return pki.create_ca("Globex Device CA")


@pytest.fixture(autouse=True)
def _fast_passwords(settings: object) -> None:
    # The persona fixtures hash four passwords per test; PBKDF2 makes that a second.
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]  # type: ignore[attr-defined]
