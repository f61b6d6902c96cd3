"""TOTP codes computed the way an authenticator app does (RFC 6238 over
RFC 4226, HMAC-SHA1, 30-second steps, six digits), from the base32 secret the
set-up page shows: the tests play the phone without trusting the hub's own
code for it."""

from __future__ import annotations

import base64
import hashlib
import hmac
import struct
import time


def secret_bytes(shown: str) -> bytes:
    text = "".join(shown.split()).upper()
    return base64.b32decode(text + "=" * (-len(text) % 8))


def totp(shown_secret: str, at: float | None = None, *, step: int = 30, digits: int = 6) -> str:
    counter = int((time.time() if at is None else at) // step)
    digest = hmac.new(secret_bytes(shown_secret), struct.pack(">Q", counter), hashlib.sha1).digest()
    offset = digest[-1] & 0x0F
    value = struct.unpack(">I", digest[offset : offset + 4])[0] & 0x7FFFFFFF
    return str(value % 10**digits).zfill(digits)


def wrong_code(shown_secret: str) -> str:
    """Six digits no step near now accepts."""
    now = time.time()
    near = {totp(shown_secret, now + offset) for offset in range(-90, 91, 30)}
    candidate = 0
    while f"{candidate:06d}" in near:
        candidate += 1
    return f"{candidate:06d}"
