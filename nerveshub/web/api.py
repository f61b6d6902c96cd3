"""REST endpoints for an organization's members and invitations:
/orgs/{org}/members/…, /orgs/{org}/invitations. The rules are
nerveshub.tenancy.services' (never the last admin); invitations are this app's,
because their link opens one of its pages."""

from __future__ import annotations

from datetime import datetime

from django.db.models import Q
from django.http import HttpRequest
from django.urls import reverse
from ninja import Router, Schema, Status
from ninja.errors import HttpError
from pydantic import ConfigDict, Field

from nerveshub.apihelpers import actor, require_org
from nerveshub.tenancy import accounts, services
from nerveshub.tenancy.models import Membership, Role
from nerveshub.web import services as invitations

router = Router(tags=["members"])


# --- Members -------------------------------------------------------------------------------
# Reading the list needs `view`, as on the members page; every change needs `admin`.

MEMBERS = "/orgs/{org}/members"


class MemberOut(Schema):
    username: str
    email: str
    role: str


class MemberIn(Schema):
    model_config = ConfigDict(extra="forbid")
    user: str = Field(min_length=1, max_length=254, description="User name or e-mail address of an existing user")
    role: str = Field(max_length=20, description="admin, manage or view")


class MemberPatch(Schema):
    model_config = ConfigDict(extra="forbid")
    role: str = Field(max_length=20, description="admin, manage or view")


class InvitationIn(Schema):
    model_config = ConfigDict(extra="forbid")
    email: str = Field(min_length=3, max_length=254)
    role: str = Field(max_length=20, description="admin, manage or view")


class InvitationOut(Schema):
    email: str
    role: str
    expires_at: datetime
    invite_url: str = Field(description="The single-use link to hand to the person; the hub sends no e-mail")


# Values are checked in the view, after the access check: an outsider learns
# nothing from the shape of a body, whatever they send.
def _role(value: str) -> Role:
    try:
        return Role(value.strip().lower())
    except ValueError:
        raise HttpError(422, "role must be one of admin, manage, view") from None


def _member_out(membership: Membership) -> MemberOut:
    return MemberOut(username=membership.user.get_username(), email=membership.user.email, role=membership.role)


def _membership(request: HttpRequest, org: str, username: str) -> Membership:
    organization = require_org(request, org, Role.ADMIN)
    found = (
        Membership.objects.select_related("user", "org")
        .filter(org=organization)
        .filter(Q(user__username=username) | Q(user__email__iexact=username))
        .order_by("pk")[:2]
    )
    if len(found) != 1:
        raise HttpError(404, f"member {username!r} not found in {org}")
    return found[0]


@router.get(MEMBERS, response=list[MemberOut])
def list_members(request: HttpRequest, org: str) -> list[MemberOut]:
    organization = require_org(request, org)
    rows = Membership.objects.filter(org=organization).select_related("user").order_by("user__username")
    return [_member_out(m) for m in rows]


@router.post(MEMBERS, response={201: MemberOut})
def add_member(request: HttpRequest, org: str, payload: MemberIn) -> Status[MemberOut]:
    """Add an existing user; someone without an account is invited instead
    (POST /orgs/{org}/invitations)."""
    organization = require_org(request, org, Role.ADMIN)
    role = _role(payload.role)
    user = accounts.user_for_sign_in(payload.user)
    if user is None:
        raise HttpError(404, f"no user {payload.user!r}; invite them by e-mail address instead")
    try:
        membership = services.add_member(actor(request), organization, user, role)
    except services.MemberChangeRefused as exc:
        raise HttpError(409, str(exc)) from None
    return Status(201, _member_out(membership))


@router.patch(MEMBERS + "/{username}", response=MemberOut)
def change_role(request: HttpRequest, org: str, username: str, payload: MemberPatch) -> MemberOut:
    membership = _membership(request, org, username)
    role = _role(payload.role)
    try:
        changed = services.change_member_role(actor(request), membership, role)
    except services.MemberChangeRefused as exc:
        raise HttpError(409, str(exc)) from None
    return _member_out(changed)


@router.delete(MEMBERS + "/{username}", response={204: None})
def remove_member(request: HttpRequest, org: str, username: str) -> Status[None]:
    membership = _membership(request, org, username)
    try:
        services.remove_member(actor(request), membership)
    except services.MemberChangeRefused as exc:
        raise HttpError(409, str(exc)) from None
    return Status(204, None)


@router.post("/orgs/{org}/invitations", response={201: InvitationOut})
def invite(request: HttpRequest, org: str, payload: InvitationIn) -> Status[InvitationOut]:
    """Invite someone by e-mail address: the answer's link, opened while signed
    in (or after signing up), makes them a member with the role."""
    organization = require_org(request, org, Role.ADMIN)
    role = _role(payload.role)
    email = payload.email.strip()
    if email.count("@") != 1 or any(c.isspace() for c in email) or email.startswith("@") or email.endswith("@"):
        raise HttpError(422, "email must be an e-mail address")
    issued = invitations.create_invitation(actor(request), organization, role, email)
    url = request.build_absolute_uri(reverse("web:invitation", args=[issued.clear]))
    return Status(
        201,
        InvitationOut(
            email=issued.invitation.email,
            role=issued.invitation.role,
            expires_at=issued.invitation.expires_at,
            invite_url=url,
        ),
    )
