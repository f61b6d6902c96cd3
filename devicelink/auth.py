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
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import Any

import psycopg
from django.conf import settings
from django.core.exceptions import ValidationError
from django.db import DatabaseError, IntegrityError, transaction
from django.db.models import Q
from django.utils import timezone
from psycopg_pool import PoolTimeout

from devicelink import hotpath, nh1
from devicelink.certauth import device_from_scope, forwarded_certificate
from devicelink.dbthreads import device_db_call
from devicelink.errors import AuthError
from devices import publish
from devices.models import Device, DeviceSharedSecret, ProductSharedSecret, validate_identifier
from devices.services import PRODUCT_KEY_PREFIX, ConnectionInfo, open_device_connection
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


# x-nh-alg, x-nh-key, x-nh-time, x-nh-signature, the parsed alg, the failure counters.
_Checked = tuple[str, str, str, str, nh1.Alg, list[ratelimit.Bucket]]


def _refuse(reason: str, detail: str) -> AuthError:
    return AuthError(401, reason, detail)


@dataclass(frozen=True, slots=True)
class _ProductKey:
    """An active product key as last read: what the fast connect needs of it.
    A key's secret never changes (a new secret is a new key); whether the key is
    still active is checked by the connect statement itself on every use
    (devicelink.hotpath), so this entry cannot let a deactivated key in."""

    key_id: int
    secret: str
    product_id: int
    org_id: int
    last_used_at: datetime | None


# Product keys this process read, unsealed (docs/security.md, "Shared secrets").
# Filled only by keys that exist and are active, so invented keys cannot grow it.
_product_keys: dict[str, _ProductKey] = {}
PRODUCT_KEY_CACHE_SIZE = 1024


def _secret_for_key(key: str) -> tuple[str, ProductSharedSecret | DeviceSharedSecret]:
    row: ProductSharedSecret | DeviceSharedSecret | None
    if key.startswith(PRODUCT_KEY_PREFIX):
        row = ProductSharedSecret.objects.select_related("product").filter(key=key).first()
    else:
        row = DeviceSharedSecret.objects.select_related("device__product").filter(key=key).first()
    if row is None or not row.is_active:
        _product_keys.pop(key, None)
        raise _refuse(REASON_INVALID, "unknown key" if row is None else "deactivated key")
    try:
        secret = unseal(row.secret_sealed)
    except SealError:
        # Our configuration is wrong, not the device: a platform error.
        raise AuthError(503, REASON_PLATFORM, "shared secret does not unseal") from None
    if isinstance(row, ProductSharedSecret):
        if len(_product_keys) >= PRODUCT_KEY_CACHE_SIZE:
            _product_keys.clear()
        _product_keys[key] = _ProductKey(row.pk, secret, row.product_id, row.product.org_id, row.last_used_at)
    return secret, row


def _valid_identifier(identifier: str) -> None:
    # Before any query: the lookup itself fails on PostgreSQL for a NUL, and
    # that database error would read as an outage (503) the device retries.
    try:
        validate_identifier(identifier)
    except ValidationError as exc:
        raise _refuse(REASON_IDENTIFIER + " ".join(exc.messages), "invalid identifier") from None


def _device_for_product_key(row: ProductSharedSecret, identifier: str) -> Device:
    _valid_identifier(identifier)
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


def authenticate_shared_secret(
    headers: Mapping[str, str], client: str | None = None, checked: _Checked | None = None
) -> Device:
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
    checked = checked or _checked_headers(headers, client)
    key = checked[1]
    try:
        secret, row = _secret_for_key(key)
    except AuthError as exc:
        if exc.status == 401:
            # Unknown keys are counted against the client only: one counter
            # per invented key would let a guesser fill the cache.
            _failed(_failure_buckets(client, None))
        raise
    claims = _verified_claims(checked, secret)

    if isinstance(row, ProductSharedSecret):
        device = _device_for_product_key(row, claims.identifier)
    else:
        device = row.device
        if device.identifier != claims.identifier:
            raise _refuse(REASON_INVALID, "device key signed another identifier")
        if device.is_deleted:
            raise _refuse(REASON_INVALID, "device is deleted")
    used = _touch_key(type(row), row.pk, row.last_used_at)
    entry = _product_keys.get(key)
    if entry is not None and used != entry.last_used_at:
        _product_keys[key] = replace(entry, last_used_at=used)
    return device


def _parse_alg(alg: str) -> nh1.Alg:
    return nh1.parse_alg(
        alg,
        digests=settings.NH1_ALLOWED_DIGESTS,
        max_iterations=settings.NH1_MAX_ITERATIONS,
        max_length=settings.NH1_MAX_KEY_LENGTH,
    )


def _checked_headers(headers: Mapping[str, str], client: str | None) -> _Checked:
    """The cheap checks, before any key lookup or derivation: the headers are
    there, x-nh-alg is in range, x-nh-time reads, and neither the client nor
    the key is blocked by its failure counter."""
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
        parsed = _parse_alg(alg)
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
    return alg, key, signed_time, signature, parsed, buckets


def _claims(checked: _Checked, secret: str) -> nh1.Claims:
    """The signed claims if the signature verifies with `secret` (nh1.NH1Error if not)."""
    alg, key, signed_time, signature, parsed, _ = checked
    derived = nh1.derive_key(
        secret, nh1.build_salt(alg, key, signed_time), parsed.digest, parsed.iterations, parsed.length
    )
    return nh1.decode_payload(nh1.verify_token(signature, derived))


def _verified_claims(checked: _Checked, secret: str) -> nh1.Claims:
    """The signed claims, once the signature verifies with `secret` and is recent."""
    try:
        claims = _claims(checked, secret)
    except nh1.NH1Error as exc:
        _failed(checked[5])
        raise _refuse(REASON_INVALID, str(exc)) from None
    _check_age(claims.signed_at_ms)
    return claims


def _touch_key(
    model: type[ProductSharedSecret | DeviceSharedSecret], pk: int, last_used_at: datetime | None
) -> datetime | None:
    """Record the key's use at most once per KEY_LAST_USED_INTERVAL; returns
    its last use as now recorded."""
    now = timezone.now()
    stale = now - timedelta(seconds=KEY_LAST_USED_INTERVAL)
    # Decided on the row as read, so a reconnecting fleet costs no query here;
    # the conditional UPDATE keeps two racing connects to one write.
    if last_used_at is None or last_used_at < stale:
        model.objects.filter(Q(last_used_at__isnull=True) | Q(last_used_at__lt=stale), pk=pk).update(last_used_at=now)
        return now
    return last_used_at


def _note_key_use(key: str, entry: _ProductKey) -> None:
    used = _touch_key(ProductSharedSecret, entry.key_id, entry.last_used_at)
    if used != entry.last_used_at:
        _product_keys[key] = replace(entry, last_used_at=used)


def _key_use_is_stale(entry: _ProductKey) -> bool:
    last = entry.last_used_at
    return last is None or last < timezone.now() - timedelta(seconds=KEY_LAST_USED_INTERVAL)


# Above this many PBKDF2 iterations the derivation is left to a database thread:
# on the event loop it would hold up every other socket of the process (nerves_hub_link
# signs with 1,000; a derivation of 1,000 costs about 0.4 ms on a shared core).
LOOP_MAX_ITERATIONS = 2000


async def connect_returning_device(
    headers: Mapping[str, str], client: str | None, channel: str, lease_id: int | None
) -> hotpath.Connected | None:
    """The fast path of `connect_shared_secret`, from the event loop: a device the
    hub knows, signing with a product key this process has read, is verified
    here and connected by one statement on the fast pool (devicelink.fastdb),
    with no hop to a database thread. Anything not plainly in order (a header,
    the signature, its age, a failure counter, an unknown device, a database
    error) returns None: the caller then takes `connect_shared_secret` on a
    thread, which decides, refuses and counts the failure. This path never
    refuses, so it needs no copy of the refusal rules; it only raises
    AuthError(503) when the database cannot be reached."""
    if not (hotpath.enabled() and settings.DEVICE_SHARED_SECRETS_ENABLED):
        return None
    values = [headers.get(name) for name in NH_HEADERS]
    if any(not value for value in values):
        return None
    alg, key, signed_time, signature = (str(v) for v in values)
    entry = _product_keys.get(key)
    if entry is None:
        return None
    try:
        parsed = _parse_alg(alg)
        nh1.parse_time(signed_time)
    except nh1.NH1Error:
        return None
    if parsed.iterations > LOOP_MAX_ITERATIONS:
        return None
    buckets = _failure_buckets(client, key)
    if await ratelimit.blocked_async(buckets):
        return None
    try:
        claims = _claims((alg, key, signed_time, signature, parsed, buckets), entry.secret)
        _check_age(claims.signed_at_ms)
        _valid_identifier(claims.identifier)
    except (nh1.NH1Error, AuthError):
        return None
    try:
        known = await hotpath.connect_returning_async(
            org_id=entry.org_id,
            product_id=entry.product_id,
            key_id=entry.key_id,
            identifier=claims.identifier,
            channel=channel,
            lease_id=lease_id,
            now=timezone.now(),
        )
    except (psycopg.Error, PoolTimeout) as exc:
        # The database the thread path would ask is the same one: 503 now, while
        # the device still waits for an answer (the thread path would wait again).
        raise AuthError(503, REASON_PLATFORM, f"database error: {exc!r}") from None
    if known is None:
        return None
    publish.page_device_connected_now(entry.org_id, known.device_id)
    if _key_use_is_stale(entry):
        # Once per key and KEY_LAST_USED_INTERVAL.
        await device_db_call(_note_key_use)(key, entry)
    return known


def connect_shared_secret(
    headers: Mapping[str, str], client: str | None, channel: str, lease_id: int | None, *, try_fast: bool = True
) -> hotpath.Connected:
    """Authenticate NH1 headers and record the connection on `channel`
    (`devices.services.open_device_connection`), in one call on a device
    database thread. A device the hub knows, signing with a product key this
    process has read before, costs one statement (devicelink.hotpath); every
    other connect, and every refusal, takes the full path."""
    checked = None
    if try_fast and hotpath.enabled():
        checked = _checked_headers(headers, client)
        entry = _product_keys.get(checked[1])
        if entry is not None:
            claims = _verified_claims(checked, entry.secret)
            _valid_identifier(claims.identifier)
            now = timezone.now()
            known = hotpath.connect_returning(
                org_id=entry.org_id,
                product_id=entry.product_id,
                key_id=entry.key_id,
                identifier=claims.identifier,
                channel=channel,
                lease_id=lease_id,
                now=now,
            )
            if known is not None:
                publish.page_device_connected(entry.org_id, known.device_id)
                _note_key_use(checked[1], entry)
                return known
    device = authenticate_shared_secret(headers, client, checked)
    info = open_device_connection(device, channel, lease_id)
    return hotpath.Connected(device_id=device.pk, identifier=device.identifier, info=info, known=None)


# --- The chain ---------------------------------------------------------------------


async def connect_device(scope: Mapping[str, Any], channel: str, lease_id: int | None) -> hotpath.Connected:
    """Authenticate the device (the chain below) and record its connection on
    `channel`, raising AuthError to refuse. A device that signs NH1 headers and
    presents no certificate: a returning one from the event loop
    (`connect_returning_device`), any other in one call on a database thread
    (`connect_shared_secret`). A certificate device takes the chain, then
    `devices.services.open_device_connection`."""
    if forwarded_certificate(scope) is None:
        headers = scope_headers(scope)
        # Like the reference: any x-* header means "shared secret was attempted".
        if not any(name.startswith("x-") for name in headers):
            raise AuthError(401, REASON_NO_CREDENTIALS)
        peer = scope.get("client")
        client = client_address(str(peer[0]) if peer else None, headers.get("x-forwarded-for"))
        fast = await connect_returning_device(headers, client, channel, lease_id)
        if fast is not None:
            return fast
        try:
            # The fast path's statement, if it ran, ran above: not twice.
            connected: hotpath.Connected = await device_db_call(connect_shared_secret)(
                headers, client, channel, lease_id, try_fast=False
            )
        except DatabaseError as exc:
            raise AuthError(503, REASON_PLATFORM, f"database error: {exc}") from None
        return connected
    device = await authenticate_device(scope)
    info: ConnectionInfo = await device_db_call(open_device_connection)(device, channel, lease_id)
    return hotpath.Connected(device_id=device.pk, identifier=device.identifier, info=info, known=None)


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
