"""Two-factor sign-in for people's accounts: an authenticator app (TOTP,
django-otp's totp plugin) and ten one-time recovery codes (its static plugin)
for when the app is lost.

Turning it on takes two steps: `start_totp_setup` makes an unconfirmed
authenticator whose secret the person scans, and `confirm_totp_setup` makes it
count once a code from the app matches, which proves the app holds the secret.
Only a confirmed authenticator asks for a code at sign-in (`is_enabled`).
Turning it off needs the password and a code (`disable_two_factor`).

Every change is audited as a hub-level event, as account changes are
(nerveshub.tenancy.accounts): enabling, disabling, and each recovery code used.

Wrong codes wait before the next try: django-otp doubles a device's wait after
each failure (1, 2, 4 … seconds, see OTP_*_THROTTLE_FACTOR). The sign-in page
counts them against the account's sign-in lock too (nerveshub.web.throttle).
"""

from __future__ import annotations

import math
from base64 import b32encode
from typing import Any

from django.contrib.auth.models import User
from django.core.exceptions import ValidationError
from django.db import transaction
from django.utils import timezone
from django_otp.models import Device
from django_otp.plugins.otp_static.models import StaticDevice, StaticToken
from django_otp.plugins.otp_totp.models import TOTPDevice

from nerveshub.tenancy.services import Actor, audit

RECOVERY_CODE_COUNT = 10
AUTHENTICATOR_NAME = "Authenticator app"
RECOVERY_NAME = "Recovery codes"

# ValidationError codes: a wrong code counts as a failed sign-in, a refusal to
# check one yet (the device's wait) does not.
WRONG_CODE = "wrong_code"
WAIT = "wait"

WRONG_CODE_MESSAGE = "This code is not right. Check the time on your phone, or use a recovery code."
ALREADY_ON = "Two-factor authentication is already on."
NOT_STARTED = "Start again: there is no authenticator waiting to be confirmed."
NOT_ON = "Two-factor authentication is not on."


def is_enabled(user: User) -> bool:
    """Whether signing in as `user` asks for a second factor."""
    return bool(TOTPDevice.objects.filter(user_id=user.pk, confirmed=True).exists())


def pending_totp(user: User) -> TOTPDevice | None:
    """The authenticator shown for scanning and not yet confirmed, if any."""
    return TOTPDevice.objects.filter(user_id=user.pk, confirmed=False).first()


def confirmed_totp(user: User) -> TOTPDevice | None:
    return TOTPDevice.objects.filter(user_id=user.pk, confirmed=True).first()


def totp_secret(device: TOTPDevice) -> str:
    """The secret as authenticator apps take it typed in: base32, no padding."""
    return b32encode(device.bin_key).decode("ascii").rstrip("=")


def recovery_codes_left(user: User) -> int:
    return int(StaticToken.objects.filter(device__user_id=user.pk, device__confirmed=True).count())


def start_totp_setup(user: User) -> TOTPDevice:
    """A new unconfirmed authenticator with a fresh secret, replacing one that
    was shown before and never confirmed."""
    with transaction.atomic():
        if is_enabled(user):
            raise ValidationError(ALREADY_ON, code="already_on")
        TOTPDevice.objects.filter(user_id=user.pk, confirmed=False).delete()
        return TOTPDevice.objects.create(user=user, name=AUTHENTICATOR_NAME, confirmed=False)


def cancel_totp_setup(user: User) -> None:
    """Forget a secret that was shown and never confirmed (nothing to audit:
    it never protected anything)."""
    TOTPDevice.objects.filter(user_id=user.pk, confirmed=False).delete()


def confirm_totp_setup(user: User, code: str) -> list[str]:
    """Turn two-factor sign-in on once `code` matches the waiting
    authenticator; the new recovery codes, which are shown once and stored
    only in the device table that checks them."""
    codes: list[str] = []
    refusal: ValidationError | None = None
    with transaction.atomic():
        device = TOTPDevice.objects.select_for_update().filter(user_id=user.pk, confirmed=False).first()
        if device is None:
            refusal = ValidationError({"code": [NOT_STARTED]}, code="not_started")
        elif (wait := _wait_message(device)) is not None:
            refusal = ValidationError({"code": [wait]}, code=WAIT)
        elif not device.verify_token(_digits(code)):
            # Not raised here: the device's failure count, just saved, must commit.
            refusal = ValidationError({"code": [WRONG_CODE_MESSAGE]}, code=WRONG_CODE)
        elif TOTPDevice.objects.filter(pk=device.pk, confirmed=False).update(confirmed=True):
            StaticDevice.objects.filter(user_id=user.pk).delete()
            codes = _new_recovery_codes(user)
            audit(user, "user.two_factor_enabled", user, details={"recovery_codes": len(codes)})
        else:
            refusal = ValidationError({"code": [NOT_STARTED]}, code="not_started")
    if refusal is not None:
        raise refusal
    return codes


def _new_recovery_codes(user: User) -> list[str]:
    device = StaticDevice.objects.create(user=user, name=RECOVERY_NAME, confirmed=True)
    codes: list[str] = []
    while len(codes) < RECOVERY_CODE_COUNT:
        token = StaticToken.random_token()
        if token not in codes:
            codes.append(token)
    StaticToken.objects.bulk_create(StaticToken(device=device, token=token) for token in codes)
    return codes


def _digits(code: str) -> str:
    return "".join(code.split())


def normalise_recovery_code(code: str) -> str:
    """As stored: lower case, without the spaces or dashes people type."""
    return "".join(code.split()).replace("-", "").lower()


def _wait_message(device: Device) -> str | None:
    allowed, info = device.verify_is_allowed()
    if allowed:
        return None
    locked_until = (info or {}).get("locked_until")
    seconds = math.ceil((locked_until - timezone.now()).total_seconds()) if locked_until else 1
    seconds = max(1, seconds)
    return f"Too many wrong codes: wait {seconds} second{'' if seconds == 1 else 's'} and try again."


def check_second_factor(user: User, code: str) -> Device:
    """The device that accepts `code`: six digits from the authenticator app,
    or else one of the recovery codes, which is used up. ValidationError with
    code WRONG_CODE or WAIT otherwise."""
    digits = _digits(code)
    device: Device | None
    refusal: ValidationError | None = None
    with transaction.atomic():
        if digits.isdigit() and len(digits) in (6, 8):
            device = TOTPDevice.objects.select_for_update().filter(user_id=user.pk, confirmed=True).first()
            token = digits
        else:
            device = StaticDevice.objects.select_for_update().filter(user_id=user.pk, confirmed=True).first()
            token = normalise_recovery_code(code)
        if device is None or not token:
            refusal = ValidationError(WRONG_CODE_MESSAGE, code=WRONG_CODE)
        elif (wait := _wait_message(device)) is not None:
            refusal = ValidationError(wait, code=WAIT)
        elif not device.verify_token(token):
            # Not raised here: the device's failure count, just saved, must commit.
            refusal = ValidationError(WRONG_CODE_MESSAGE, code=WRONG_CODE)
        elif isinstance(device, StaticDevice):
            left = device.token_set.count()
            audit(user, "user.two_factor_recovery_code_used", user, details={"recovery_codes_left": left})
    if refusal is not None or device is None:
        raise refusal or ValidationError(WRONG_CODE_MESSAGE, code=WRONG_CODE)
    return device


def _prove_it_is_them(user: User, password: str, code: str) -> None:
    """The account's password and a current code (or a recovery code, used up):
    the person, not a borrowed session. ValidationError by field otherwise."""
    errors: dict[str, Any] = {}
    if not is_enabled(user):
        raise ValidationError(NOT_ON, code="not_on")
    if not user.check_password(password):
        errors["password"] = ValidationError("This is not your current password.", code="password_incorrect")
    else:
        try:
            check_second_factor(user, code)
        except ValidationError as exc:
            errors["code"] = exc
    if errors:
        raise ValidationError(errors)


def regenerate_recovery_codes(user: User, password: str, code: str) -> list[str]:
    """Ten new recovery codes in place of every old one (used up, lost or
    seen by someone else), on the password and a current code. The new codes
    are shown once, as at set-up."""
    _prove_it_is_them(user, password, code)
    with transaction.atomic():
        if not is_enabled(user):
            raise ValidationError(NOT_ON, code="not_on")
        StaticDevice.objects.filter(user_id=user.pk).delete()
        codes = _new_recovery_codes(user)
        audit(user, "user.two_factor_recovery_codes_replaced", user, details={"recovery_codes": len(codes)})
    return codes


def disable_two_factor(user: User, password: str, code: str) -> None:
    """Turn two-factor sign-in off: the account's password and a current code
    (or a recovery code) prove it is the person, not a borrowed session."""
    _prove_it_is_them(user, password, code)
    with transaction.atomic():
        removed, _ = TOTPDevice.objects.filter(user_id=user.pk).delete()
        StaticDevice.objects.filter(user_id=user.pk).delete()
        if removed:
            audit(user, "user.two_factor_disabled", user)


def reset_two_factor(actor: Actor, user: User) -> bool:
    """Turn it off for a person who lost both the app and the recovery
    codes, on a hub operator's word (`manage.py reset_two_factor`). True if it
    was on."""
    with transaction.atomic():
        removed, _ = TOTPDevice.objects.filter(user_id=user.pk).delete()
        StaticDevice.objects.filter(user_id=user.pk).delete()
        if removed:
            audit(actor, "user.two_factor_reset", user)
    return bool(removed)
