"""Browser-approved sign-in for command-line tools (docs/nerveshub-api.md,
"Browser-approved sign-in"): the tool starts a session and polls it with a
secret; a signed-in person opens the session's page, checks that the
confirmation code matches the one the tool shows, and approves; the next poll
receives a new API token of that person's, once.

Starting and polling are rate-limited per client address
(nerveshub.lib.ratelimit): CLI_SESSION_START_LIMIT starts per 10 minutes, and
CLI_SESSION_POLL_LIMIT polls per minute."""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass
from datetime import timedelta

from django.conf import settings
from django.contrib.auth.models import User
from django.db import transaction
from django.utils import timezone

from nerveshub.lib import ratelimit
from nerveshub.tenancy import services as tenancy
from nerveshub.web.models import CliSession

CLI_SESSION_TTL = timedelta(minutes=10)
START_WINDOW = 600
POLL_WINDOW = 60
# No 0/O or 1/I: the person compares the code by eye.
CODE_ALPHABET = "ABCDEFGHJKLMNPQRSTUVWXYZ23456789"


class TooManyRequests(Exception):
    """Over a rate limit; the message says which."""


@dataclass(frozen=True)
class StartedSession:
    session: CliSession
    secret: str  # the tool's, never stored


def _hash(secret: str) -> str:
    return hashlib.sha256(secret.encode("utf-8", "replace")).hexdigest()


def _code() -> str:
    text = "".join(secrets.choice(CODE_ALPHABET) for _ in range(8))
    return f"{text[:4]}-{text[4:]}"


def _count(kind: str, address: str, limit: int, window: int) -> None:
    bucket = [ratelimit.Bucket.of(kind, address, limit)]
    if ratelimit.blocked(bucket):
        raise TooManyRequests(f"too many requests from your address; try again in {window // 60 or 1} minute(s)")
    ratelimit.record(bucket, window)


def start_cli_session(note: str, address: str) -> StartedSession:
    _count("cli-session-start", address, settings.CLI_SESSION_START_LIMIT, START_WINDOW)
    secret = "nhcs_" + secrets.token_urlsafe(32)
    session = CliSession.objects.create(
        secret_hash=_hash(secret),
        public_id=secrets.token_urlsafe(24),
        confirmation_code=_code(),
        note=note[:100],
        client_address=address[:100],
        expires_at=timezone.now() + CLI_SESSION_TTL,
    )
    return StartedSession(session=session, secret=secret)


def find_open_session(public_id: str) -> CliSession | None:
    session = CliSession.objects.filter(public_id=public_id).first()
    return session if session is not None and session.is_open else None


def approve_cli_session(user: User, session: CliSession) -> bool:
    with transaction.atomic():
        changed = CliSession.objects.filter(
            pk=session.pk, approved_at__isnull=True, denied_at__isnull=True, expires_at__gt=timezone.now()
        ).update(approved_at=timezone.now(), approved_by=user)
        if changed:
            details = {"note": session.note, "address": session.client_address, "code": session.confirmation_code}
            tenancy.audit(user, "cli_session.approved", session, details=details)
    return bool(changed)


def deny_cli_session(user: User, session: CliSession) -> bool:
    changed = CliSession.objects.filter(pk=session.pk, approved_at__isnull=True, denied_at__isnull=True).update(
        denied_at=timezone.now()
    )
    return bool(changed)


def poll_cli_session(secret: str, address: str) -> tuple[str, str | None] | None:
    """("waiting", None), ("ready", the new token) once, or None: unknown,
    expired, denied or already handed over."""
    _count("cli-session-poll", address, settings.CLI_SESSION_POLL_LIMIT, POLL_WINDOW)
    session = CliSession.objects.select_related("approved_by").filter(secret_hash=_hash(secret)).first()
    now = timezone.now()
    if session is None or session.denied_at is not None or session.delivered_at is not None:
        return None
    if session.approved_at is None:
        return ("waiting", None) if session.expires_at > now else None
    user = session.approved_by
    if user is None or not user.is_active:
        return None
    with transaction.atomic():
        # Once: of two concurrent polls only one hands the token over.
        if not CliSession.objects.filter(pk=session.pk, delivered_at__isnull=True).update(delivered_at=now):
            return None
        issued = tenancy.create_api_token(user, user, session.note or "NervesHub tools (browser sign-in)")
    return ("ready", issued.clear)
