"""Signing in from NervesHub's tools, the user, their organizations and the
organizations' members (docs/nerveshub-api.md, "Users" and "Members")."""

from __future__ import annotations

from django.contrib.auth import authenticate
from django.contrib.auth.models import User
from django.db.models import Q
from django.http import HttpRequest
from django.urls import reverse
from ninja import Router, Schema, Status
from ninja.errors import HttpError
from pydantic import ConfigDict, Field

from nerveshub.apihelpers import actor
from nerveshub.lib.clientaddr import request_client_address
from nerveshub.nhapi.common import Data, FieldErrors, not_found, org_for
from nerveshub.tenancy import accounts, twofactor
from nerveshub.tenancy import services as tenancy
from nerveshub.tenancy.models import Membership, Role
from nerveshub.web import cli_sessions, throttle
from nerveshub.web import services as members

router = Router(tags=["users"])

# NervesHub's older role names, which its tools still accept.
TWO_FACTOR_REFUSAL = (
    "this account uses two-factor authentication: sign in through the browser "
    "(mix nerves_hub.user auth without a password, or POST /api/auth/cli_session), or use an API token"
)
ROLE_ALIASES = {"admin": Role.ADMIN, "manage": Role.MANAGE, "view": Role.VIEW, "write": Role.MANAGE, "read": Role.VIEW}


class SignInIn(Schema):
    model_config = ConfigDict(extra="ignore")
    email: str = Field(min_length=1, max_length=254, description="The user name or the e-mail address")
    password: str = Field(min_length=1, max_length=4096)
    note: str = Field("", max_length=100, description="What the token is for")


class SignedInOut(Schema):
    name: str
    username: str
    email: str
    token: str


class UserOut(Schema):
    name: str
    username: str
    email: str


class OrgOut(Schema):
    name: str


class MemberOut(Schema):
    name: str
    username: str
    email: str
    role: str


class MemberIn(Schema):
    model_config = ConfigDict(extra="ignore")
    username: str | None = Field(None, max_length=254, description="User name or e-mail address of an existing user")
    email: str | None = Field(None, max_length=254)
    role: str = Field(max_length=20)


class InviteIn(Schema):
    model_config = ConfigDict(extra="ignore")
    email: str = Field(min_length=3, max_length=254)
    role: str = Field(max_length=20)


class InviteOut(Schema):
    email: str
    role: str
    invite_url: str = Field(description="The single-use link to hand to the person; valid for 7 days")


class RoleIn(Schema):
    model_config = ConfigDict(extra="ignore")
    role: str = Field(max_length=20)


def _user_out(user: User) -> UserOut:
    return UserOut(name=user.get_username(), username=user.get_username(), email=user.email)


def _role(value: str) -> str:
    role = ROLE_ALIASES.get(value.strip().lower())
    if role is None:
        raise FieldErrors({"role": ["must be one of admin, manage, view"]})
    return role


def _find_user(text: str) -> User | None:
    """The user a person means by what they typed: the sign-in pages' rule
    (a user name, or an e-mail address that names exactly one account)."""
    return accounts.user_for_sign_in(text)


def _sign_in(request: HttpRequest, payload: SignInIn) -> Status[Data[SignedInOut]]:
    """Throttled like the sign-in page (nerveshub.web.throttle): the lock is
    checked before the password, and failures count per account (by its user
    name, whichever of name or e-mail was typed) and per address."""
    typed = payload.email.strip()
    user = _find_user(typed)
    subject = user.get_username() if user is not None else typed
    address = request_client_address(request)
    refusal = throttle.login_refusal(subject, address)
    if refusal:
        raise HttpError(429, refusal)
    signed_in = authenticate(request, username=user.get_username(), password=payload.password) if user else None
    if not isinstance(signed_in, User):
        refusal = throttle.record_login_failure(subject, address)
        raise HttpError(429 if refusal else 401, refusal or "invalid user name, e-mail address or password")
    if twofactor.is_enabled(signed_in):
        # A password alone never mints a token for such an account: the
        # browser-approved sign-in (/api/auth/cli_session) asks for the code.
        raise HttpError(401, TWO_FACTOR_REFUSAL)
    throttle.record_login_success(subject)
    issued = tenancy.create_api_token(signed_in, signed_in, (payload.note.strip() or "NervesHub tools")[:100])
    name = signed_in.get_username()
    return Status(200, Data(data=SignedInOut(name=name, username=name, email=signed_in.email, token=issued.clear)))


@router.post("/users/login", auth=None, response={200: Data[SignedInOut]})
def login(request: HttpRequest, payload: SignInIn) -> Status[Data[SignedInOut]]:
    """Sign in with a user name or e-mail address (in `email`) and password; the
    answer carries a new API token."""
    return _sign_in(request, payload)


@router.post("/users/auth", auth=None, response={200: Data[SignedInOut]})
def auth(request: HttpRequest, payload: SignInIn) -> Status[Data[SignedInOut]]:
    """The same as /users/login (older tools call this one)."""
    return _sign_in(request, payload)


class CliSessionIn(Schema):
    model_config = ConfigDict(extra="ignore")
    note: str = Field("", max_length=100, description="What the token will be for")


class CliSessionOut(Schema):
    token: str = Field(description="The secret to poll GET /api/auth/cli_session/{token} with")
    url: str = Field(description="The page where the person approves the sign-in")
    confirmation_code: str = Field(description="The code the page shows; the tool shows it too")


class CliSessionStatusOut(Schema):
    status: str = Field(description="waiting or ready")
    user_token: str | None = Field(None, description="The new API token, once ready (handed over once)")


@router.post("/auth/cli_session", auth=None, response={201: Data[CliSessionOut]}, tags=["users"])
def start_cli_session(request: HttpRequest, payload: CliSessionIn) -> Status[Data[CliSessionOut]]:
    """Start a browser-approved sign-in; rate-limited per client address."""
    try:
        started = cli_sessions.start_cli_session(payload.note.strip(), request_client_address(request))
    except cli_sessions.TooManyRequests as exc:
        raise HttpError(429, str(exc)) from None
    url = request.build_absolute_uri(reverse("web:cli_session", args=[started.session.public_id]))
    out = CliSessionOut(token=started.secret, url=url, confirmation_code=started.session.confirmation_code)
    return Status(201, Data(data=out))


@router.get("/auth/cli_session/{token}", auth=None, response=Data[CliSessionStatusOut], tags=["users"])
def poll_cli_session(request: HttpRequest, token: str) -> Data[CliSessionStatusOut]:
    """`waiting` until the person approves, then `ready` with the token, once.
    Unknown, expired, refused or already answered sessions are 404."""
    try:
        polled = cli_sessions.poll_cli_session(token, request_client_address(request))
    except cli_sessions.TooManyRequests as exc:
        raise HttpError(429, str(exc)) from None
    if polled is None:
        raise not_found("sign-in session")
    status, user_token = polled
    return Data(data=CliSessionStatusOut(status=status, user_token=user_token))


@router.get("/users/me", response=Data[UserOut])
def me(request: HttpRequest) -> Data[UserOut]:
    return Data(data=_user_out(actor(request)))


@router.get("/orgs", response=Data[list[OrgOut]])
def list_orgs(request: HttpRequest) -> Data[list[OrgOut]]:
    return Data(data=[OrgOut(name=o.name) for o in tenancy.orgs_for(actor(request)).order_by("name")])


# --- Members ------------------------------------------------------------------------

USERS = "/orgs/{org}/users"


def _member_out(membership: Membership) -> MemberOut:
    user = membership.user
    return MemberOut(name=user.get_username(), username=user.get_username(), email=user.email, role=membership.role)


def _membership(request: HttpRequest, org: str, who: str, role: str = Role.VIEW) -> Membership:
    organization = org_for(request, org, role)
    rows = Membership.objects.select_related("user", "org").filter(org=organization)
    found = rows.filter(Q(user__username__iexact=who) | Q(user__email__iexact=who)).order_by("pk")[:2]
    if len(found) != 1:
        raise not_found(f"member {who!r}")
    return found[0]


@router.get(USERS, response=Data[list[MemberOut]], tags=["members"])
def list_members(request: HttpRequest, org: str) -> Data[list[MemberOut]]:
    organization = org_for(request, org)
    rows = Membership.objects.filter(org=organization).select_related("user").order_by("user__username")
    return Data(data=[_member_out(m) for m in rows])


@router.post(USERS, response={201: Data[MemberOut]}, tags=["members"])
def add_member(request: HttpRequest, org: str, payload: MemberIn) -> Status[Data[MemberOut]]:
    """Add an existing user (by user name or e-mail address) with a role."""
    organization = org_for(request, org, Role.ADMIN)
    role = _role(payload.role)
    who = (payload.username or payload.email or "").strip()
    user = _find_user(who) if who else None
    if user is None:
        raise FieldErrors({"username": ["no such user; invite them by e-mail address instead"]})
    try:
        membership = tenancy.add_member(actor(request), organization, user, role)
    except tenancy.MemberChangeRefused as exc:
        raise HttpError(409, str(exc)) from None
    return Status(201, Data(data=_member_out(membership)))


@router.post(USERS + "/invite", response={201: Data[InviteOut]}, tags=["members"])
def invite(request: HttpRequest, org: str, payload: InviteIn) -> Status[Data[InviteOut]]:
    """Create an invitation; the hub sends no e-mail, the answer's `invite_url`
    is the link to hand over (as on the organization's members page)."""
    organization = org_for(request, org, Role.ADMIN)
    role = _role(payload.role)
    email = payload.email.strip()
    if "@" not in email or any(c.isspace() for c in email):
        raise FieldErrors({"email": ["must be an e-mail address"]})
    issued = members.create_invitation(actor(request), organization, role, email)
    url = request.build_absolute_uri(reverse("web:invitation", args=[issued.clear]))
    return Status(201, Data(data=InviteOut(email=email, role=role, invite_url=url)))


@router.get(USERS + "/{who}", response=Data[MemberOut], tags=["members"])
def get_member(request: HttpRequest, org: str, who: str) -> Data[MemberOut]:
    return Data(data=_member_out(_membership(request, org, who)))


@router.put(USERS + "/{who}", response=Data[MemberOut], tags=["members"])
def change_role(request: HttpRequest, org: str, who: str, payload: RoleIn) -> Data[MemberOut]:
    membership = _membership(request, org, who, Role.ADMIN)
    try:
        changed = tenancy.change_member_role(actor(request), membership, _role(payload.role))
    except tenancy.MemberChangeRefused as exc:
        raise HttpError(409, str(exc)) from None
    return Data(data=_member_out(changed))


@router.delete(USERS + "/{who}", response={204: None}, tags=["members"])
def remove_member(request: HttpRequest, org: str, who: str) -> Status[None]:
    membership = _membership(request, org, who, Role.ADMIN)
    try:
        tenancy.remove_member(actor(request), membership)
    except tenancy.MemberChangeRefused as exc:
        raise HttpError(409, str(exc)) from None
    return Status(204, None)
