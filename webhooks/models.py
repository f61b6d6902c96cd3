"""Webhook endpoints an organization registers, and the outbox of deliveries to them.

A delivery row is written in the transaction of the event it announces, so an
event that rolls back announces nothing and one that commits is sent at least
once: the row is the work item, the broker only wakes a worker
(docs/webhooks.md).
"""

from __future__ import annotations

import secrets
import uuid

from django.db import models
from django.utils import timezone

from nerveshub.lib.sealed import seal, unseal
from nerveshub.tenancy.models import Organization


class EventType(models.TextChoices):
    DEVICE_ONLINE = "device.online", "Device online"
    DEVICE_OFFLINE = "device.offline", "Device offline"
    UPDATE_STARTED = "update.started", "Update started"
    UPDATE_COMPLETED = "update.completed", "Update completed"
    UPDATE_FAILED = "update.failed", "Update failed"
    DEPLOYMENT_PAUSED = "deployment.paused_by_breaker", "Deployment paused by the circuit breaker"
    FIRMWARE_VALIDATED = "firmware.validated", "Firmware validated"
    FIRMWARE_REJECTED = "firmware.rejected", "Firmware rejected"


def new_sealed_secret() -> str:
    return seal("whsec_" + secrets.token_urlsafe(32))


class WebhookEndpoint(models.Model):
    org = models.ForeignKey(Organization, models.CASCADE, related_name="webhook_endpoints")
    url = models.URLField(max_length=500, help_text="HTTPS address the hub POSTs events to.")
    description = models.CharField(max_length=200, blank=True)
    event_types = models.JSONField(default=list, blank=True, help_text="Event types this endpoint receives.")
    # The signing key, sealed at rest (nerveshub.lib.sealed): signing needs it in clear.
    secret_sealed = models.TextField(default=new_sealed_secret, editable=False)
    is_active = models.BooleanField(default=True)
    created_at = models.DateTimeField(default=timezone.now, editable=False)

    class Meta:
        ordering = ["org__name", "url"]
        indexes = [models.Index(fields=["org", "is_active"], name="webhook_endpoint_org_idx")]

    def __str__(self) -> str:
        return self.url

    @property
    def secret(self) -> str:
        return unseal(self.secret_sealed)

    def wants(self, event_type: str) -> bool:
        return self.is_active and event_type in (self.event_types or [])


class DeliveryStatus(models.TextChoices):
    PENDING = "pending", "Pending"
    SUCCEEDED = "succeeded", "Delivered"
    FAILED = "failed", "Gave up"


class WebhookDelivery(models.Model):
    """One event for one endpoint: the outbox row and its delivery log."""

    endpoint = models.ForeignKey(WebhookEndpoint, models.CASCADE, related_name="deliveries")
    org = models.ForeignKey(Organization, models.CASCADE, related_name="+")
    # The event's id: the same on every attempt and every replay, so a receiver
    # can tell a repeat from a new event.
    event_id = models.UUIDField(default=uuid.uuid4, editable=False)
    event_type = models.CharField(max_length=50, choices=EventType.choices)
    payload = models.JSONField()
    status = models.CharField(max_length=10, choices=DeliveryStatus.choices, default=DeliveryStatus.PENDING)
    attempts = models.PositiveIntegerField(default=0)
    # When a pending row is due; while an attempt is in progress, when its lease
    # ends (so a lost worker's row is picked up again by the sweep).
    next_attempt_at = models.DateTimeField(default=timezone.now)
    last_status = models.PositiveSmallIntegerField(null=True, blank=True, help_text="HTTP status of the last attempt.")
    # A class ("http_500", "timeout", "refused_destination", …), never the
    # receiver's answer: an endpoint aimed at an internal service would read it back.
    last_error = models.TextField(
        blank=True, help_text="Error class of the last attempt; the receiver's answer is never kept."
    )
    replay_of = models.ForeignKey("self", models.SET_NULL, null=True, blank=True, related_name="replays")
    created_at = models.DateTimeField(default=timezone.now, editable=False)
    delivered_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at", "-id"]
        verbose_name_plural = "webhook deliveries"
        indexes = [
            # The sweep: pending rows that are due, oldest first.
            models.Index(
                fields=["next_attempt_at"],
                name="webhook_delivery_due_idx",
                condition=models.Q(status="pending"),
            ),
            # The delivery log of one endpoint, newest first.
            models.Index(fields=["endpoint", "-created_at"], name="webhook_delivery_log_idx"),
            models.Index(fields=["org", "-created_at"], name="webhook_delivery_org_idx"),
        ]

    def __str__(self) -> str:
        return f"{self.event_type} → {self.endpoint_id} ({self.status})"
