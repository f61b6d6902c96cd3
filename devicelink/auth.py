"""Who is on the other end of a device socket: the authenticator chain.

The socket consumer calls `authenticate_device(scope)`, which asks, in order:

1. the client certificate (forwarded by the TLS-terminating proxy), through
   `authenticate_certificate_request` (`devicelink.certauth.device_from_scope`,
   which asks the certificates app's services);
2. NH1 shared-secret headers (`x-nh-*`), verified here.

Each authenticator returns the Device, returns None when its credentials are
absent, or raises AuthError(status, reason) to refuse. The first to answer wins,
as in the reference server (docs/reference-behaviour.md §2.1): a certificate beats
headers.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from datetime import timedelta
from typing import Any

from django.conf import settings
from django.core.exceptions import ValidationError
from django.db import DatabaseError, IntegrityError, transaction
from django.db.models import Q
from django.utils import timezone

from devicelink import nh1
from devicelink.certauth import device_from_scope
from devicelink.dbthreads import device_db_call
from devicelink.errors import AuthError
from devices.models import Device, DeviceSharedSecret, ProductSharedSecret, validate_identifier
from devices.services import PRODUCT_KEY_PREFIX
from nerveshub.lib import ratelimit
from nerveshub.lib.clientaddr import client_address
from nerveshub.lib.sealed import SealError, unseal
from nerveshub.tenancy.services import audit

logger = logging.getLogger(__name__)

# Reasons of docs/device-protocol.md §1.6; devices ignore them, operators read them.
REASON_NO_CREDENTIALS = "no certificate pair or shared secrets connection settings were provided"
REASON_PLATFORM = "the platform could not be reached to authenticate this device"
# Deliberately coarse: which check failed is logged, not told to the caller, so
# the header cannot be used to probe for valid keys or identifiers.
REASON_INVALID = "invalid shared secret credentials"
REASON_EXPIRED = "shared secret signature expired: check the device clock"
REASON_FUTURE = "shared secret signature is in the future: check the device clock"
# Not coarse: neither says anything about which keys or identifiers exist.
REASON_ALG = "x-nh-alg refused: "
REASON_IDENTIFIER = "identifier refused: "
REASON_THROTTLED = "too many failed authentications; retry later"

NH_HEADERS = ("x-nh-alg", "x-nh-key", "x-nh-time", "x-nh-signature")
# Writes to last_used_at are throttled: a reconnect storm must not become a write storm.
KEY_LAST_USED_INTERVAL = 3600


def scope_headers(scope: Mapping[str, Any]) -> dict[str, str]:
    headers: dict[str, str] = {}
    for name, value in scope.get("headers", ()):
        headers.setdefault(name.decode("latin1").lower(), value.decode("latin1"))
    return headers


# --- 1. Certificates (devicelink/certauth.py) -----------------------------------


async def authenticate_certificate_request(scope: Mapping[str, Any]) -> Device | None:
    """The certificate authenticator (`devicelink.certauth.device_from_scope`, on
    a device database thread). Returns None when no certificate was presented."""
    result = await device_db_call(device_from_scope)(scope)
    return result if isinstance(result, Device) else None


# --- 2. NH1 shared secrets -------------------------------------------------------


def _refuse(reason: str, detail: str) -> AuthError:
    return AuthError(401, reason, detail)


def _secret_for_key(key: str) -> tuple[str, ProductSharedSecret | DeviceSharedSecret]:
    row: ProductSharedSecret | DeviceSharedSecret | None
    if key.startswith(PRODUCT_KEY_PREFIX):
        row = ProductSharedSecret.objects.select_related("product").filter(key=key).first()
    else:
        row = DeviceSharedSecret.objects.select_related("device__product").filter(key=key).first()
    if row is None:
        raise _refuse(REASON_INVALID, "unknown key")
    if not row.is_active:
        raise _refuse(REASON_INVALID, "deactivated key")
    try:
        return unseal(row.secret_sealed), row
    except SealError:
        # Our configuration is wrong, not the device: a platform error.
        raise AuthError(503, REASON_PLATFORM, "shared secret does not unseal") from None


def _device_for_product_key(row: ProductSharedSecret, identifier: str) -> Device:
    # Before any query: the lookup itself fails on PostgreSQL for a NUL, and
    # that database error would read as an outage (503) the device retries.
    try:
        validate_identifier(identifier)
    except ValidationError as exc:
        raise _refuse(REASON_IDENTIFIER + " ".join(exc.messages), "invalid identifier") from None
    product = row.product
    existing = Device.objects.filter(org_id=product.org_id, identifier=identifier).first()
    if existing is None:
        try:
            with transaction.atomic():
                existing = Device.objects.create(org_id=product.org_id, product=product, identifier=identifier)
                audit(f"device:{identifier}", "device.registered", existing, details={"key": row.key})
            return existing
        except IntegrityError:
            # Two first connections raced; the other created it.
            existing = Device.objects.get(org_id=product.org_id, identifier=identifier)
    if existing.product_id != product.pk:
        raise _refuse(REASON_INVALID, "identifier already exists in another product")
    existing.product = product  # already loaded with the key: the connection needs it
    if existing.is_deleted:
        raise _refuse(REASON_INVALID, "device is deleted")
    return existing


def _check_age(signed_at_ms: int) -> None:
    now_ms = int(time.time() * 1000)
    if signed_at_ms > now_ms + settings.DEVICE_AUTH_FUTURE_SKEW * 1000:
        raise _refuse(REASON_FUTURE, "signed in the future")
    if signed_at_ms + settings.DEVICE_AUTH_MAX_AGE * 1000 < now_ms:
        raise _refuse(REASON_EXPIRED, "signature expired")


def _failure_buckets(client: str | None, key: str | None) -> list[ratelimit.Bucket]:
    buckets = []
    if client is not None:
        buckets.append(ratelimit.Bucket.of("nh1-address", client, settings.NH1_FAILURES_PER_ADDRESS))
    if key is not None:
        buckets.append(ratelimit.Bucket.of("nh1-key", key, settings.NH1_FAILURES_PER_KEY))
    return buckets


def _failed(buckets: list[ratelimit.Bucket]) -> None:
    ratelimit.record(buckets, settings.NH1_FAILURE_WINDOW)


def authenticate_shared_secret(headers: Mapping[str, str], client: str | None = None) -> Device:
    """Verify the NH1 headers (docs/device-protocol.md §2.4) and return the device,
    registering it first when a product key signs an unknown identifier.

    `client` names the peer (nerveshub.lib.clientaddr). What costs the hub
    (the key lookup, the PBKDF2 derivation) comes after the cheap checks: the
    x-nh-alg range (NH1_* settings) and the failure counters. Failures that do
    not prove the secret (malformed headers, an unknown or deactivated key, a
    signature that does not verify) count against the client and, for a known
    key, the key; a signature that verifies but is too old, or a refused
    identifier, proves the secret and is not counted (a fleet with a bad clock
    must not lock its own key)."""
    if not settings.DEVICE_SHARED_SECRETS_ENABLED:
        raise _refuse(REASON_INVALID, "shared secrets are disabled")
    values = [headers.get(name) for name in NH_HEADERS]
    if any(not value for value in values):
        # The reference answers 503 here (a crash in its integer parse); a
        # missing header is the device's fault, so we answer 401.
        _failed(_failure_buckets(client, None))
        raise _refuse(REASON_INVALID, "missing x-nh-* header")
    alg, key, signed_time, signature = (str(v) for v in values)
    try:
        parsed = nh1.parse_alg(
            alg,
            digests=settings.NH1_ALLOWED_DIGESTS,
            max_iterations=settings.NH1_MAX_ITERATIONS,
            max_length=settings.NH1_MAX_KEY_LENGTH,
        )
    except nh1.NH1Error as exc:
        _failed(_failure_buckets(client, None))
        raise _refuse(REASON_ALG + str(exc), str(exc)) from None
    try:
        nh1.parse_time(signed_time)
    except nh1.NH1Error as exc:
        _failed(_failure_buckets(client, None))
        raise _refuse(REASON_INVALID, str(exc)) from None
    buckets = _failure_buckets(client, key)
    if ratelimit.blocked(buckets):
        raise AuthError(429, REASON_THROTTLED, "too many failed authentications from this client or with this key")
    try:
        secret, row = _secret_for_key(key)
    except AuthError as exc:
        if exc.status == 401:
            # Unknown keys are counted against the client only: one counter
            # per invented key would let a guesser fill the cache.
            _failed(_failure_buckets(client, None))
        raise
    derived = nh1.derive_key(
        secret, nh1.build_salt(alg, key, signed_time), parsed.digest, parsed.iterations, parsed.length
    )
    try:
        claims = nh1.decode_payload(nh1.verify_token(signature, derived))
    except nh1.NH1Error as exc:
        _failed(buckets)
        raise _refuse(REASON_INVALID, str(exc)) from None
    _check_age(claims.signed_at_ms)

    if isinstance(row, ProductSharedSecret):
        device = _device_for_product_key(row, claims.identifier)
    else:
        device = row.device
        if device.identifier != claims.identifier:
            raise _refuse(REASON_INVALID, "device key signed another identifier")
        if device.is_deleted:
            raise _refuse(REASON_INVALID, "device is deleted")

    now = timezone.now()
    stale = now - timedelta(seconds=KEY_LAST_USED_INTERVAL)
    # Decided on the row just read, so a reconnecting fleet costs no query here;
    # the conditional UPDATE keeps two racing connects to one write.
    if row.last_used_at is None or row.last_used_at < stale:
        type(row).objects.filter(Q(last_used_at__isnull=True) | Q(last_used_at__lt=stale), pk=row.pk).update(
            last_used_at=now
        )
    return device


# --- The chain ---------------------------------------------------------------------


async def authenticate_device(scope: Mapping[str, Any]) -> Device:
    """Return the authenticated device or raise AuthError."""
    try:
        device = await authenticate_certificate_request(scope)
        if device is not None:
            return device
        headers = scope_headers(scope)
        # Like the reference: any x-* header means "shared secret was attempted".
        if any(name.startswith("x-") for name in headers):
            peer = scope.get("client")
            client = client_address(str(peer[0]) if peer else None, headers.get("x-forwarded-for"))
            shared: Device = await device_db_call(authenticate_shared_secret)(headers, client)
            return shared
    except AuthError:
        raise
    except ValidationError as exc:
        # A device the rules refuse to register (an identifier from a
        # certificate's CN, say): definitive, so 401 with the rule, never 503.
        raise AuthError(401, REASON_IDENTIFIER + " ".join(exc.messages)) from None
    except DatabaseError as exc:
        raise AuthError(503, REASON_PLATFORM, f"database error: {exc}") from None
    raise AuthError(401, REASON_NO_CREDENTIALS)
