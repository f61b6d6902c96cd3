"""People's own accounts: the e-mail address they sign in and reset with, and
their password. Every change is audited (hub-level events: a person belongs to
no single organization).

An e-mail address names at most one account, compared without regard to case:
it is a sign-in name (`user_for_sign_in`) and where password resets go. Django's
User does not hold that rule, so every path that sets an address here checks it;
the admin's user form is the hub operators' own and is not checked.
"""

from __future__ import annotations

from django.contrib.auth import password_validation
from django.contrib.auth.models import User
from django.core.exceptions import ValidationError
from django.core.validators import validate_email
from django.db import transaction

from nerveshub.tenancy.services import audit

EMAIL_TAKEN = "Another account uses this e-mail address."


def normalise_email(email: str) -> str:
    """The address as stored: surrounding space dropped, the domain lower-cased
    (the local part may be case-sensitive to its mail server)."""
    local, at, domain = email.strip().rpartition("@")
    return f"{local}@{domain.lower()}" if at else email.strip()


def check_email(email: str, *, user: User | None = None) -> str:
    """The normalised address, or ValidationError: malformed, or another
    account's."""
    email = normalise_email(email)
    validate_email(email)
    others = User.objects.filter(email__iexact=email)
    if user is not None:
        others = others.exclude(pk=user.pk)
    if others.exists():
        raise ValidationError(EMAIL_TAKEN, code="email_taken")
    return email


def user_for_sign_in(name: str) -> User | None:
    """The account a sign-in name means: a user name, or else an e-mail address
    that names exactly one account."""
    name = name.strip()
    if not name:
        return None
    user = User.objects.filter(username=name).first()
    if user is not None or "@" not in name:
        return user
    matches = list(User.objects.filter(email__iexact=normalise_email(name))[:2])
    return matches[0] if len(matches) == 1 else None


def change_email(user: User, email: str) -> User:
    """Set the person's address (checked as `check_email` does)."""
    email = check_email(email, user=user)
    with transaction.atomic():
        previous = user.email
        User.objects.filter(pk=user.pk).update(email=email)
        user.email = email
        audit(user, "user.email_changed", user, details={"from": previous, "to": email})
    return user


def change_password(user: User, password: str) -> User:
    """Set a new password, checked by AUTH_PASSWORD_VALIDATORS. Saving the
    password ends the person's other sessions and consoles
    (nerveshub.tenancy.access_events)."""
    password_validation.validate_password(password, user)
    with transaction.atomic():
        user.set_password(password)
        user.save(update_fields=["password"])
        audit(user, "user.password_changed", user)
    return user
