"""Sign-in and password-reset throttling, per account and per client address.

Counts live in the default cache (settings.CACHES): Redis when REDIS_URL is
set, so every hub process shares them; the process's own memory in embedded
mode, which runs a single server process (as its in-memory channel layer does).
A failed sign-in adds one to the account's and the address's counts; a count
that reaches its limit locks that account or address for LOGIN_LOCKOUT_SECONDS,
and the lock is written to the audit log once (action `login.locked_out`, shown
in the admin's audit events). While locked, even the right password is refused,
so guessing gains nothing. Password-reset requests are counted whether or not
the address belongs to an account (answering differently would tell which do).
Keys hold a hash of the username or address, never the text.
"""

from __future__ import annotations

import hashlib
import logging
import math
import time

from django.conf import settings
from django.contrib.auth.models import User
from django.core.cache import caches
from django.core.cache.backends.base import BaseCache

from nerveshub.tenancy import services as tenancy

logger = logging.getLogger(__name__)

LOCKED_MESSAGE = "Too many failed sign-ins {scope}. Try again in {minutes} minute{s}."
RESET_MESSAGE = "Too many password reset requests {scope}. Try again in {minutes} minute{s}."


def _cache() -> BaseCache:
    return caches["default"]


def _key(kind: str, value: str) -> str:
    return f"throttle:{kind}:" + hashlib.sha256(value.encode("utf-8", "replace")).hexdigest()[:40]


def _minutes(seconds: float) -> tuple[int, str]:
    minutes = max(1, math.ceil(seconds / 60))
    return minutes, "" if minutes == 1 else "s"


def _count(key: str, window: int) -> int:
    """Add one to a counter that lives `window` seconds from its first hit."""
    cache = _cache()
    cache.add(key, 0, window)
    try:
        return int(cache.incr(key))
    except ValueError:  # expired between add and incr
        cache.set(key, 1, window)
        return 1


def _subjects(username: str, address: str) -> list[tuple[str, str, int, str]]:
    return [
        ("account", username.strip().lower(), settings.LOGIN_FAILURE_LIMIT, "for this account"),
        ("address", address, settings.LOGIN_ADDRESS_FAILURE_LIMIT, "from your address"),
    ]


def login_refusal(username: str, address: str) -> str | None:
    """The message to show instead of checking the password, or None."""
    now = time.time()
    for kind, value, _limit, scope in _subjects(username, address):
        until = _cache().get(_key(f"lock-{kind}", value))
        if until is not None and float(until) > now:
            minutes, s = _minutes(float(until) - now)
            return LOCKED_MESSAGE.format(scope=scope, minutes=minutes, s=s)
    return None


def record_login_failure(username: str, address: str) -> str | None:
    """Count a failed sign-in; the refusal message when it locked something."""
    window = settings.LOGIN_LOCKOUT_SECONDS
    refusal = None
    for kind, value, limit, scope in _subjects(username, address):
        if _count(_key(f"fail-{kind}", value), window) < limit:
            continue
        until = time.time() + window
        minutes, s = _minutes(window)
        refusal = refusal or LOCKED_MESSAGE.format(scope=scope, minutes=minutes, s=s)
        # add: only the failure that reached the limit locks and records it.
        if _cache().add(_key(f"lock-{kind}", value), until, window):
            _record_lockout(kind, username, address, window)
    return refusal


def record_login_success(username: str) -> None:
    # The account's count starts again; the address's does not (an attacker
    # signing in to an account of their own must not reset it).
    _cache().delete(_key("fail-account", username.strip().lower()))


def _record_lockout(kind: str, username: str, address: str, seconds: int) -> None:
    user = User.objects.filter(username__iexact=username.strip()).first() if kind == "account" else None
    logger.warning("sign-in locked for %s s by %s: username %r from %s", seconds, kind, username[:150], address)
    tenancy.audit(
        f"address:{address}"[:200],
        "login.locked_out",
        user,
        details={"by": kind, "username": username[:150], "address": address, "seconds": seconds},
    )


def password_reset_refusal(email: str, address: str) -> str | None:
    """Count a password-reset request; the refusal message when over the limit."""
    window = settings.PASSWORD_RESET_WINDOW_SECONDS
    for kind, value, scope in (
        ("email", email.strip().lower(), "for this address"),
        ("address", address, "from your network address"),
    ):
        if _count(_key(f"reset-{kind}", value), window) > settings.PASSWORD_RESET_LIMIT:
            minutes, s = _minutes(window)
            return RESET_MESSAGE.format(scope=scope, minutes=minutes, s=s)
    return None
