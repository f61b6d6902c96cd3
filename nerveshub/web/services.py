"""Business rules the organization pages need beyond the domain apps' own
services: invitations. Member changes are nerveshub.tenancy.services'. Every
change writes its audit event in the same transaction."""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass
from datetime import timedelta

from django.contrib.auth.models import User
from django.core import signing
from django.db import transaction
from django.utils import timezone

from nerveshub.tenancy import services as tenancy
from nerveshub.tenancy.models import Membership, Organization, Role
from nerveshub.web.models import Invitation

INVITATION_TTL = timedelta(days=7)
INVITATION_PREFIX = "nhi_"


class InvitationInvalid(Exception):
    """The link is unknown, expired, revoked or already used."""


@dataclass(frozen=True)
class IssuedInvitation:
    invitation: Invitation
    clear: str  # goes into the link once, never stored


# The link's token is a random secret signed with a timestamp: a forged or
# stale link is refused before any query, and the row (which holds only the
# secret's SHA-256) makes it single-use and revocable.
_SIGNER = signing.TimestampSigner(salt="nerveshub.web.invitation")


def _hash(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def _secret_of(token: str) -> str:
    try:
        return _SIGNER.unsign(token, max_age=INVITATION_TTL)
    except signing.BadSignature:
        raise InvitationInvalid("This invitation link is not valid any more. Ask for a new one.") from None


def create_invitation(actor: User, org: Organization, role: str, email: str = "") -> IssuedInvitation:
    secret = INVITATION_PREFIX + secrets.token_urlsafe(32)
    clear = _SIGNER.sign(secret)
    with transaction.atomic():
        invitation = Invitation.objects.create(
            org=org,
            email=email,
            role=Role(role),
            token_hash=_hash(secret),
            created_by=actor,
            expires_at=timezone.now() + INVITATION_TTL,
        )
        audit_details = {"role": invitation.role, "email": email, "expires_at": invitation.expires_at.isoformat()}
        tenancy.audit(actor, "invitation.created", invitation, details=audit_details)
    return IssuedInvitation(invitation=invitation, clear=clear)


def find_invitation(clear: str) -> Invitation:
    """The open invitation behind a link, or InvitationInvalid."""
    invitation = Invitation.objects.select_related("org").filter(token_hash=_hash(_secret_of(clear))).first()
    if invitation is None or not invitation.is_open:
        raise InvitationInvalid("This invitation link is not valid any more. Ask for a new one.")
    return invitation


def accept_invitation(user: User, clear: str) -> Membership:
    """Spend the invitation and make `user` a member with its role. A user who
    already has a higher role keeps it."""
    invitation = find_invitation(clear)
    with transaction.atomic():
        # Single use: of two concurrent accepts only one changes the row.
        spent = Invitation.objects.filter(
            pk=invitation.pk, accepted_at__isnull=True, revoked_at__isnull=True, expires_at__gt=timezone.now()
        ).update(accepted_at=timezone.now(), accepted_by=user)
        if not spent:
            raise InvitationInvalid("This invitation link is not valid any more. Ask for a new one.")
        tenancy.audit(user, "invitation.accepted", invitation, details={"role": invitation.role})
        current = Membership.objects.filter(org=invitation.org, user=user).first()
        if current is not None and current.has_role(invitation.role):
            return current
        return tenancy.set_membership(user, invitation.org, user, invitation.role)


def revoke_invitation(actor: User, invitation: Invitation) -> bool:
    with transaction.atomic():
        changed = Invitation.objects.filter(pk=invitation.pk, accepted_at__isnull=True, revoked_at__isnull=True).update(
            revoked_at=timezone.now()
        )
        if changed:
            tenancy.audit(actor, "invitation.revoked", invitation)
    return bool(changed)
