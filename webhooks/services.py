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
exponential backoff, last_status, and an error class in last_error, never the
receiver's answer). Celery (or, in embedded mode, the bounded DeliveryPool)
sends a row after its transaction commits; the periodic sweep picks up rows
whose message was lost or whose retry is due. Where a delivery may connect is
webhooks.destinations.

Imports: `webhooks/tasks.py` calls this module and this module enqueues its
task (`dispatch`), the shape of a service and its Celery task; the one import
back is made when `dispatch` runs.
"""

from __future__ import annotations

import hashlib
import hmac
import http.client
import ipaddress
import json
import logging
import ssl
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from functools import partial
from heapq import heappop, heappush
from typing import Any
from urllib.parse import SplitResult, urlsplit
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
from webhooks import destinations
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
# What a failed attempt records in last_error: a class, never the receiver's
# answer (an endpoint aimed at an internal service would read it back).
ERROR_TIMEOUT = "timeout"
ERROR_CONNECTION = "connection_error"
ERROR_DNS = "dns_error"
ERROR_TLS = "tls_error"
ERROR_REFUSED_DESTINATION = "refused_destination"
ERROR_REDIRECT = "redirect_not_followed"
ERROR_DISABLED = "endpoint_disabled"
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


def _check_scheme(url: str) -> SplitResult:
    """HTTPS, or plain HTTP to a loopback address or when WEBHOOK_ALLOW_HTTP is
    set: event payloads and their signatures must not cross networks in clear.
    This rule is about the scheme only: where the hub may connect at all is
    the destination check (WEBHOOK_ALLOWED_NETWORKS), which loopback must pass too."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValidationError("Enter an http:// or https:// address.")
    if parts.username or parts.password:
        raise ValidationError("Credentials in the address would be stored in clear; use the signature instead.")
    try:
        parts.port  # noqa: B018 - parsing the port is the check
    except ValueError:
        raise ValidationError("Enter a valid port number.") from None
    if parts.scheme == "http" and not (settings.WEBHOOK_ALLOW_HTTP or _is_loopback(parts.hostname)):
        raise ValidationError("Webhook addresses must use https:// (http:// is allowed only for loopback addresses).")
    return parts


def _port(parts: SplitResult) -> int:
    return parts.port or (443 if parts.scheme == "https" else 80)


def check_url(url: str) -> str:
    """The scheme rule, then the destination rule as far as it can be told
    now: a host that is, or resolves to, an address webhooks may not reach is
    refused with the reason. A name that does not resolve yet is accepted;
    every delivery resolves and checks again (destinations.resolve)."""
    parts = _check_scheme(url)
    assert parts.hostname is not None  # checked by _check_scheme
    try:
        destinations.resolve(parts.hostname, _port(parts))
    except destinations.RefusedDestination as exc:
        raise ValidationError(
            f"Refused: {exc.reason}. Webhooks are not sent into internal networks "
            "unless the operator names them in WEBHOOK_ALLOWED_NETWORKS."
        ) from None
    except (OSError, UnicodeError):
        pass  # not resolvable now: checked again at delivery
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


def devices_offline(devices: list[tuple[int, int, str]]) -> None:
    """These devices' current sockets closed, as (id, org id, identifier) in id
    order (call inside the transaction that records it). Disconnects come in
    bursts: one query. The devices app calls this module, so the rows come to
    it rather than it reading the devices' table."""
    listening = {
        org_id
        for org_id, types in WebhookEndpoint.objects.filter(
            org_id__in={org_id for _, org_id, _ in devices}, is_active=True
        ).values_list("org_id", "event_types")
        if EventType.DEVICE_OFFLINE in (types or [])
    }
    for pk, org_id, identifier in devices:
        if org_id in listening:
            emit(
                org_id,
                EventType.DEVICE_OFFLINE,
                {"subject": _subject("device", pk, identifier), "actor": f"device:{identifier}", "details": {}},
            )


def dispatch(delivery_id: int) -> bool:
    """Hand a committed delivery to a worker. False when the broker could not
    be reached (the sweep sends the row later)."""
    # Imported when called: webhooks.tasks imports this module (its task calls
    # the delivery service), the service-and-task cycle.
    from webhooks.tasks import deliver_webhook_task

    if settings.CELERY_TASK_ALWAYS_EAGER:
        # Embedded mode runs tasks in the calling thread, which for device
        # events is the socket server's database thread: a slow receiver must
        # not stall it. So a small pool sends instead (see DeliveryPool).
        delivery_pool.submit(delivery_id)
        return True
    return enqueue(deliver_webhook_task, delivery_id)


class DeliveryPool:
    """Embedded mode's delivery workers: at most WEBHOOK_DELIVERY_CONCURRENCY
    attempts at once, however many deliveries are pending (a fleet coming
    online with a slow receiver is thousands of them). A failed attempt's retry
    waits here, as a number on a heap rather than a sleeping thread, until it
    is due; after a restart the embedded beat's sweep finds it instead
    (devicelink.dispatcher). Threads start when there is work and nobody idle."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._ready: deque[int] = deque()
        self._later: list[tuple[float, int]] = []  # (time.monotonic() when due, delivery id)
        self._queued: set[int] = set()  # in _ready or _later: a second submit is a no-op
        self._threads = 0
        self._idle = 0
        self._active = 0
        self.peak = 0  # most attempts under way at once, for the logs and tests

    def submit(self, delivery_id: int, delay: float = 0.0) -> None:
        with self._cond:
            if delivery_id in self._queued:
                return
            self._queued.add(delivery_id)
            if delay > 0:
                heappush(self._later, (time.monotonic() + delay, delivery_id))
            else:
                self._ready.append(delivery_id)
            if self._idle == 0 and self._threads < settings.WEBHOOK_DELIVERY_CONCURRENCY:
                self._threads += 1
                threading.Thread(target=self._work, name="webhook-delivery", daemon=True).start()
            self._cond.notify_all()

    def _take(self) -> int:
        with self._cond:
            self._idle += 1
            try:
                while True:
                    now = time.monotonic()
                    while self._later and self._later[0][0] <= now:
                        self._ready.append(heappop(self._later)[1])
                    # The limit is read each time: a lowered setting takes hold
                    # without stopping threads that were started before.
                    if self._ready and self._active < settings.WEBHOOK_DELIVERY_CONCURRENCY:
                        delivery_id = self._ready.popleft()
                        self._queued.discard(delivery_id)
                        self._active += 1
                        self.peak = max(self.peak, self._active)
                        return delivery_id
                    self._cond.wait(self._later[0][0] - now if self._later else None)
            finally:
                self._idle -= 1

    def _done(self) -> None:
        with self._cond:
            self._active -= 1
            self._cond.notify_all()

    def _work(self) -> None:
        while True:
            delivery_id = self._take()
            try:
                outcome = deliver(delivery_id)
                if outcome is not None and outcome.retry_at is not None:
                    self.submit(delivery_id, delay=(outcome.retry_at - timezone.now()).total_seconds())
            except Exception:
                logger.exception("webhook delivery %s failed", delivery_id)
            finally:
                self._done()
                close_old_connections()


delivery_pool = DeliveryPool()


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


def http_error(status: int) -> str:
    """The error class of a non-2xx answer: redirects are answers, not
    instructions (following one would send the signed payload, and the hub's
    reach, to an address nobody registered or checked)."""
    return ERROR_REDIRECT if 300 <= status < 400 else f"http_{status}"


def _post(endpoint: WebhookEndpoint, delivery: WebhookDelivery) -> tuple[int | None, str]:
    """One POST. Returns the status code and the error class ("" on 2xx). The
    body of the answer is never read."""
    try:
        # The settings may have changed since the endpoint was saved, and its
        # name may resolve elsewhere now: both rules again, on this attempt.
        parts = _check_scheme(endpoint.url)
        assert parts.hostname is not None
        addresses = destinations.resolve(parts.hostname, _port(parts))
    except (ValidationError, destinations.RefusedDestination) as exc:
        logger.warning("webhook delivery %s refused: %s", delivery.pk, getattr(exc, "reason", exc))
        return None, ERROR_REFUSED_DESTINATION
    except (OSError, UnicodeError):
        return None, ERROR_DNS
    body = json.dumps(delivery.payload, sort_keys=True, separators=(",", ":")).encode()
    timestamp = int(time.time())
    headers = {
        "Content-Type": "application/json",
        "User-Agent": "NervesHub-Webhooks/1",
        EVENT_HEADER: delivery.event_type,
        EVENT_ID_HEADER: str(delivery.event_id),
        DELIVERY_HEADER: str(delivery.pk),
        TIMESTAMP_HEADER: str(timestamp),
        SIGNATURE_HEADER: sign(endpoint.secret, timestamp, body),
    }
    target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    connection = destinations.connection(
        parts.scheme, parts.hostname, _port(parts), addresses, settings.WEBHOOK_TIMEOUT
    )
    try:
        connection.request("POST", target, body=body, headers=headers)
        status = connection.getresponse().status
    except TimeoutError:
        return None, ERROR_TIMEOUT
    except ssl.SSLError:
        return None, ERROR_TLS
    except (OSError, http.client.HTTPException, ValueError):
        return None, ERROR_CONNECTION
    finally:
        connection.close()
    return status, "" if 200 <= status < 300 else http_error(status)


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
        status_code, error = None, ERROR_DISABLED
    delivered = status_code is not None and 200 <= status_code < 300
    fields: dict[str, Any] = {"last_status": status_code, "last_error": error}
    retry_at: datetime | None = None
    if delivered:
        fields.update(status=DeliveryStatus.SUCCEEDED, delivered_at=timezone.now(), next_attempt_at=now)
    elif (
        attempt >= settings.WEBHOOK_MAX_ATTEMPTS
        or not delivery.endpoint.is_active
        # A refused address is the endpoint's, not the network's: retrying
        # would only knock on the same door again.
        or error == ERROR_REFUSED_DESTINATION
    ):
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
