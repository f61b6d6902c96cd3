"""Invitations: how an organization admin brings a person in."""

from __future__ import annotations

from django.conf import settings
from django.db import models
from django.utils import timezone

from nerveshub.tenancy.models import Organization, Role


class Invitation(models.Model):
    """A single-use, expiring invitation to join an organization with a role.

    The link carries a random secret, signed with a timestamp; only the
    secret's SHA-256 is stored, so the table alone lets nobody join.
    Accepting is a compare-and-set on accepted_at."""

    org = models.ForeignKey(Organization, models.CASCADE, related_name="invitations")
    email = models.EmailField(blank=True, help_text="Whom the link was meant for (informational).")
    role = models.CharField(max_length=10, choices=Role.choices, default=Role.VIEW)
    token_hash = models.CharField(max_length=64, unique=True)
    created_by = models.ForeignKey(settings.AUTH_USER_MODEL, models.SET_NULL, null=True, blank=True, related_name="+")
    created_at = models.DateTimeField(default=timezone.now, editable=False)
    expires_at = models.DateTimeField()
    accepted_at = models.DateTimeField(null=True, blank=True)
    accepted_by = models.ForeignKey(settings.AUTH_USER_MODEL, models.SET_NULL, null=True, blank=True, related_name="+")
    revoked_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at"]

    def __str__(self) -> str:
        return f"invitation to {self.org_id} as {self.role}"

    @property
    def is_open(self) -> bool:
        return self.accepted_at is None and self.revoked_at is None and self.expires_at > timezone.now()


class CliSession(models.Model):
    """A sign-in a command-line tool asked for and a person approves in the
    browser (docs/nerveshub-api.md, "Browser-approved sign-in"). The tool holds
    the poll secret, of which only the SHA-256 is stored; the browser opens the
    page by `public_id`, a different random value, so that the address the
    person's browser history keeps cannot collect the token. Approving and
    handing the token over are each a compare-and-set on their timestamp."""

    secret_hash = models.CharField(max_length=64, unique=True)
    public_id = models.CharField(max_length=64, unique=True)
    confirmation_code = models.CharField(max_length=9)
    note = models.CharField(max_length=100, blank=True)
    client_address = models.CharField(max_length=100, blank=True)
    created_at = models.DateTimeField(default=timezone.now, editable=False)
    expires_at = models.DateTimeField()
    approved_by = models.ForeignKey(settings.AUTH_USER_MODEL, models.CASCADE, null=True, blank=True, related_name="+")
    approved_at = models.DateTimeField(null=True, blank=True)
    denied_at = models.DateTimeField(null=True, blank=True)
    delivered_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at"]

    def __str__(self) -> str:
        return f"command-line sign-in {self.confirmation_code}"

    @property
    def is_open(self) -> bool:
        return self.approved_at is None and self.denied_at is None and self.expires_at > timezone.now()
