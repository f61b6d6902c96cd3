"""Business rules for webhooks: endpoints, the outbox, delivery with retries,
signatures and replay.

Events reach the outbox two ways, both inside the transaction of the change:

* audited actions, through the audit hook (`on_audit_event`, registered by
  WebhooksConfig.ready); `AUDIT_EVENT_TYPES` is the one table that says which
  audit action is which webhook event;
* device connections, which are not audited, through `device_online` and
  `devices_offline` (heartbeats never write).

`deliver` sends one row: it claims the attempt by compare-and-set, POSTs the
signed body and records the outcome on the row (attempts, next_attempt_at with
exponential backoff, last_status, last_error). Celery sends a row after its
transaction commits; the periodic sweep picks up rows whose message was lost or
whose retry is due.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import json
import logging
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from functools import partial
from typing import Any
from urllib.parse import urlsplit
from uuid import uuid4

from django.conf import settings
from django.contrib.auth.base_user import AbstractBaseUser
from django.contrib.auth.models import AnonymousUser
from django.core.exceptions import PermissionDenied, ValidationError
from django.db import close_old_connections, models, transaction
from django.utils import timezone

from nerveshub.lib.enqueue import enqueue
from nerveshub.tenancy.models import AuditEvent, Organization, Role
from nerveshub.tenancy.services import Actor, audit, has_role
from webhooks.models import DeliveryStatus, EventType, WebhookDelivery, WebhookEndpoint, new_sealed_secret

logger = logging.getLogger(__name__)

# Audit action → the webhook event it announces. Actions not listed send nothing.
AUDIT_EVENT_TYPES: dict[str, EventType] = {
    "update.started": EventType.UPDATE_STARTED,
    "update.succeeded": EventType.UPDATE_COMPLETED,
    "update.failed": EventType.UPDATE_FAILED,
    "deployment.paused_by_breaker": EventType.DEPLOYMENT_PAUSED,
    "firmware.validated": EventType.FIRMWARE_VALIDATED,
    "firmware.rejected": EventType.FIRMWARE_REJECTED,
}

SIGNATURE_HEADER = "X-NervesHub-Signature"
TIMESTAMP_HEADER = "X-NervesHub-Timestamp"
EVENT_HEADER = "X-NervesHub-Event"
EVENT_ID_HEADER = "X-NervesHub-Event-Id"
DELIVERY_HEADER = "X-NervesHub-Delivery"
# Backoff doubles from WEBHOOK_RETRY_BASE_SECONDS per failed attempt, up to this.
MAX_BACKOFF = timedelta(hours=6)
# How much of a receiver's error answer is kept on the row.
_ERROR_BODY_CHARS = 300
FIRST_ATTEMPT_GRACE = timedelta(seconds=30)
# The sweep wakes at most this many rows per run; the next run takes the rest.
SWEEP_BATCH = 500


# --- Endpoints ----------------------------------------------------------------------


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_url(url: str) -> str:
    """HTTPS, or plain HTTP to a loopback address or when WEBHOOK_ALLOW_HTTP is
    set: event payloads and their signatures must not cross networks in clear."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValidationError("Enter an http:// or https:// address.")
    if parts.username or parts.password:
        raise ValidationError("Credentials in the address would be stored in clear; use the signature instead.")
    if parts.scheme == "http" and not (settings.WEBHOOK_ALLOW_HTTP or _is_loopback(parts.hostname)):
        raise ValidationError("Webhook addresses must use https:// (http:// is allowed only for loopback addresses).")
    return url


def check_event_types(event_types: list[str]) -> list[str]:
    unknown = sorted(set(event_types) - set(EventType.values))
    if unknown:
        raise ValidationError(f"Unknown event types: {', '.join(unknown)}")
    return sorted(set(event_types))


def _require_admin(actor: Actor, org_id: int) -> None:
    # People need the admin role; the hub itself ("system", commands) is trusted.
    if isinstance(actor, AbstractBaseUser | AnonymousUser) and not has_role(actor, org_id, Role.ADMIN):
        raise PermissionDenied("webhooks need the admin role in the organization")


@dataclass(frozen=True)
class CreatedEndpoint:
    endpoint: WebhookEndpoint
    secret: str  # for the receiver's configuration


def create_endpoint(
    actor: Actor, org: Organization, url: str, event_types: list[str], description: str = ""
) -> CreatedEndpoint:
    _require_admin(actor, org.pk)
    endpoint = WebhookEndpoint(
        org=org, url=check_url(url), event_types=check_event_types(event_types), description=description
    )
    with transaction.atomic():
        endpoint.save()
        audit(actor, "webhook_endpoint.created", endpoint, details={"url": url, "events": endpoint.event_types})
    return CreatedEndpoint(endpoint, endpoint.secret)


def rotate_secret(actor: Actor, endpoint: WebhookEndpoint) -> str:
    """A new signing secret; deliveries from now on are signed with it."""
    _require_admin(actor, endpoint.org_id)
    sealed = new_sealed_secret()
    with transaction.atomic():
        WebhookEndpoint.objects.filter(pk=endpoint.pk).update(secret_sealed=sealed)
        endpoint.secret_sealed = sealed
        audit(actor, "webhook_endpoint.secret_rotated", endpoint)
    return endpoint.secret


# --- The outbox ---------------------------------------------------------------------


def _listening(org_id: int, event_type: str) -> list[int]:
    """The org's active endpoints that subscribed to `event_type`."""
    return [
        pk
        for pk, types in WebhookEndpoint.objects.filter(org_id=org_id, is_active=True).values_list("pk", "event_types")
        if event_type in (types or [])
    ]


def emit(org_id: int, event_type: str, data: dict[str, Any], *, occurred_at: datetime | None = None) -> list[int]:
    """Write one delivery per active endpoint of the org that subscribed to
    `event_type`, and send them after the transaction commits. Costs one query
    when nobody listens. Returns the new delivery ids."""
    return _write(org_id, _listening(org_id, event_type), event_type, data, occurred_at=occurred_at)


def _write(
    org_id: int, endpoints: list[int], event_type: str, data: dict[str, Any], *, occurred_at: datetime | None = None
) -> list[int]:
    if not endpoints:
        return []
    event_id = uuid4()
    payload = {
        "id": str(event_id),
        "type": event_type,
        "created_at": (occurred_at or timezone.now()).isoformat(),
        "org_id": org_id,
        "data": data,
    }
    rows = WebhookDelivery.objects.bulk_create(
        [
            WebhookDelivery(endpoint_id=pk, org_id=org_id, event_id=event_id, event_type=event_type, payload=payload)
            for pk in endpoints
        ]
    )
    ids = [row.pk for row in rows]
    for delivery_id in ids:
        # robust: a broker outage must not fail the change that committed; the
        # sweep sends the row later.
        transaction.on_commit(partial(dispatch, delivery_id), robust=True)
    return ids


def _subject(kind: str, pk: object, name: str) -> dict[str, str]:
    return {"type": kind, "id": str(pk), "name": name}


def on_audit_event(event: AuditEvent) -> Callable[[AuditEvent], None] | None:
    """The audit hook: an audited action that is a webhook event goes to the
    outbox. Who listens is read before the event is appended (outside the
    chain's lock); the rows are written after, with the event's id and time."""
    event_type = AUDIT_EVENT_TYPES.get(event.action)
    if event_type is None or event.org_id is None:
        return None
    org_id = event.org_id
    endpoints = _listening(org_id, event_type)
    if not endpoints:
        return None

    def write(appended: AuditEvent) -> None:
        data = {
            "subject": _subject(appended.subject_type, appended.subject_id, appended.subject),
            "actor": appended.actor,
            "details": appended.details,
            "audit_event_id": appended.pk,
        }
        _write(org_id, endpoints, event_type, data, occurred_at=appended.created_at)

    return write


def device_online(device: models.Model) -> None:
    """A device socket opened (call inside the transaction that records it)."""
    identifier = str(getattr(device, "identifier", ""))
    emit(
        int(getattr(device, "org_id", 0)),
        EventType.DEVICE_ONLINE,
        {"subject": _subject("device", device.pk, identifier), "actor": f"device:{identifier}", "details": {}},
    )


def devices_offline(device_ids: list[int]) -> None:
    """These devices' current sockets closed (call inside the transaction that
    records it). Disconnects come in bursts: one query when nobody listens."""
    from devices.models import Device

    devices = Device.objects.filter(pk__in=device_ids)
    listening = {
        org_id
        for org_id, types in WebhookEndpoint.objects.filter(
            org_id__in=devices.values("org_id"), is_active=True
        ).values_list("org_id", "event_types")
        if EventType.DEVICE_OFFLINE in (types or [])
    }
    if not listening:
        return
    for row in devices.filter(org_id__in=listening).values("pk", "org_id", "identifier").order_by("pk"):
        emit(
            row["org_id"],
            EventType.DEVICE_OFFLINE,
            {
                "subject": _subject("device", row["pk"], row["identifier"]),
                "actor": f"device:{row['identifier']}",
                "details": {},
            },
        )


def dispatch(delivery_id: int) -> None:
    """Hand a committed delivery to a worker."""
    from webhooks.tasks import deliver_webhook_task

    if settings.CELERY_TASK_ALWAYS_EAGER:
        # Embedded mode runs tasks in the calling thread, which for device
        # events is the socket server's database thread: a slow receiver must
        # not stall it. There is no beat either, so the thread also waits out
        # the retries.
        threading.Thread(target=_deliver_until_done, args=(delivery_id,), daemon=True).start()
    else:
        enqueue(deliver_webhook_task, delivery_id)


def _deliver_until_done(delivery_id: int) -> None:
    try:
        while True:
            outcome = deliver(delivery_id)
            if outcome is not None and outcome.retry_at is None:
                return  # delivered, or given up
            due = (
                WebhookDelivery.objects.filter(pk=delivery_id, status=DeliveryStatus.PENDING)
                .values_list("next_attempt_at", flat=True)
                .first()
            )
            wait = (due - timezone.now()).total_seconds() if due is not None else -1.0
            if due is None or (outcome is None and wait <= 0):
                return  # finished elsewhere, or another thread is on it
            time.sleep(max(wait, 0.0) + 0.05)
    except Exception:
        logger.exception("webhook delivery %s failed", delivery_id)
    finally:
        close_old_connections()


# --- Delivery -----------------------------------------------------------------------


def sign(secret: str, timestamp: int, body: bytes) -> str:
    """The signature header's value: v1=hex(HMAC-SHA256(secret, "<timestamp>." + body))."""
    mac = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256)
    return "v1=" + mac.hexdigest()


def backoff(attempts: int) -> timedelta:
    """The wait after the `attempts`-th failed attempt: base, 2 * base, 4 * base, …"""
    delay = timedelta(seconds=settings.WEBHOOK_RETRY_BASE_SECONDS * 2 ** min(attempts - 1, 30))
    return min(delay, MAX_BACKOFF)


@dataclass(frozen=True)
class DeliveryOutcome:
    delivery_id: int
    attempt: int
    delivered: bool
    status_code: int | None
    error: str
    retry_at: datetime | None  # None: nothing more to do (delivered, or given up)


class _NoRedirects(urllib.request.HTTPRedirectHandler):
    # A redirect is an answer, not an instruction: following it would send the
    # signed payload to an address the org never registered.
    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None


_opener = urllib.request.build_opener(_NoRedirects)


def _post(endpoint: WebhookEndpoint, delivery: WebhookDelivery) -> tuple[int | None, str]:
    check_url(endpoint.url)  # the setting may have changed since the endpoint was saved
    body = json.dumps(delivery.payload, sort_keys=True, separators=(",", ":")).encode()
    timestamp = int(time.time())
    request = urllib.request.Request(  # noqa: S310 - the scheme is checked above: http(s) only
        endpoint.url,
        data=body,
        method="POST",
        headers={
            "Content-Type": "application/json",
            "User-Agent": "NervesHub-Webhooks/1",
            EVENT_HEADER: delivery.event_type,
            EVENT_ID_HEADER: str(delivery.event_id),
            DELIVERY_HEADER: str(delivery.pk),
            TIMESTAMP_HEADER: str(timestamp),
            SIGNATURE_HEADER: sign(endpoint.secret, timestamp, body),
        },
    )
    try:
        with _opener.open(request, timeout=settings.WEBHOOK_TIMEOUT) as response:
            return int(response.status), ""
    except urllib.error.HTTPError as exc:
        text = exc.read(_ERROR_BODY_CHARS).decode(errors="replace")
        return exc.code, f"HTTP {exc.code}: {text}".strip()
    except (urllib.error.URLError, OSError, ValueError) as exc:
        reason = getattr(exc, "reason", exc)
        return None, f"{type(exc).__name__}: {reason}"[:_ERROR_BODY_CHARS]


def deliver(delivery_id: int, *, now: datetime | None = None) -> DeliveryOutcome | None:
    """Make one attempt at a pending, due delivery. None when there is nothing
    to do (gone, finished, not yet due, or another worker claimed it)."""
    now = now or timezone.now()
    delivery = WebhookDelivery.objects.select_related("endpoint").filter(pk=delivery_id).first()
    if delivery is None or delivery.status != DeliveryStatus.PENDING or delivery.next_attempt_at > now:
        return None
    attempt = delivery.attempts + 1
    lease = now + timedelta(seconds=settings.WEBHOOK_TIMEOUT + 60)
    claimed = WebhookDelivery.objects.filter(
        pk=delivery.pk, status=DeliveryStatus.PENDING, attempts=delivery.attempts
    ).update(attempts=attempt, next_attempt_at=lease)
    if not claimed:
        return None
    delivery.attempts = attempt
    if delivery.endpoint.is_active:
        status_code, error = _post(delivery.endpoint, delivery)
    else:
        status_code, error = None, "the endpoint is disabled"
    delivered = status_code is not None and 200 <= status_code < 300
    fields: dict[str, Any] = {"last_status": status_code, "last_error": error[:2000]}
    retry_at: datetime | None = None
    if delivered:
        fields.update(status=DeliveryStatus.SUCCEEDED, delivered_at=timezone.now(), next_attempt_at=now)
    elif attempt >= settings.WEBHOOK_MAX_ATTEMPTS or not delivery.endpoint.is_active:
        fields.update(status=DeliveryStatus.FAILED, next_attempt_at=now)
    else:
        retry_at = now + backoff(attempt)
        fields["next_attempt_at"] = retry_at
    WebhookDelivery.objects.filter(pk=delivery.pk, attempts=attempt).update(**fields)
    if not delivered:
        logger.info("webhook delivery %s attempt %d failed: %s", delivery.pk, attempt, error)
    return DeliveryOutcome(delivery.pk, attempt, delivered, status_code, error, retry_at)


def due_delivery_ids(now: datetime | None = None, limit: int = SWEEP_BATCH) -> list[int]:
    """Pending deliveries whose time has come: retries that are due, and new
    rows whose wake-up looks lost (still untried after FIRST_ATTEMPT_GRACE; a
    younger one is most likely waiting in the broker queue)."""
    now = now or timezone.now()
    due = models.Q(attempts__gt=0, next_attempt_at__lte=now) | models.Q(
        attempts=0, next_attempt_at__lte=now - FIRST_ATTEMPT_GRACE
    )
    return list(
        WebhookDelivery.objects.filter(due, status=DeliveryStatus.PENDING)
        .order_by("next_attempt_at")
        .values_list("pk", flat=True)[:limit]
    )


# --- Replay ----------------------------------------------------------------------------


def replay_delivery(actor: Actor, delivery: WebhookDelivery) -> WebhookDelivery:
    """Send a delivery's event again, as a new delivery with the same event id.
    Only an admin of the delivery's org may."""
    _require_admin(actor, delivery.org_id)
    with transaction.atomic():
        replay = WebhookDelivery.objects.create(
            endpoint_id=delivery.endpoint_id,
            org_id=delivery.org_id,
            event_id=delivery.event_id,
            event_type=delivery.event_type,
            payload=delivery.payload,
            replay_of=delivery,
        )
        audit(
            actor,
            "webhook_delivery.replayed",
            replay,
            details={"of": delivery.pk, "event": str(delivery.event_id), "type": delivery.event_type},
        )
        transaction.on_commit(partial(dispatch, replay.pk), robust=True)
    return replay
