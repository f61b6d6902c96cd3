"""Who may see which organization's pages.

Every org view starts with `get_org_for_user`: an outsider gets 404 (the org's
existence is not confirmed), a member without the role the view needs gets 403.
The org's URL slug is its name through `slugify`; it is resolved among the
organizations the user belongs to, so resolving costs one query."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import wraps
from typing import Any, TypeVar

from django.core.exceptions import PermissionDenied
from django.http import Http404, HttpRequest, HttpResponseBase, HttpResponseNotAllowed
from django.utils.text import slugify

from nerveshub.tenancy.models import ROLE_RANK, Membership, Organization, Role


def org_slug(org: Organization | str) -> str:
    return slugify(org if isinstance(org, str) else org.name) or "org"


@dataclass(frozen=True)
class OrgAccess:
    org: Organization
    role: Role

    @property
    def slug(self) -> str:
        return org_slug(self.org)

    def can(self, role: str) -> bool:
        return ROLE_RANK[self.role] >= ROLE_RANK[Role(role)]

    @property
    def can_manage(self) -> bool:
        return self.can(Role.MANAGE)

    @property
    def is_admin(self) -> bool:
        return self.can(Role.ADMIN)


def _candidates(request: HttpRequest) -> list[tuple[Organization, Role]]:
    # One query per request, shared by the access check and the org switcher.
    cached: list[tuple[Organization, Role]] | None = getattr(request, "_org_candidates", None)
    if cached is not None:
        return cached
    user = request.user
    if not user.is_authenticated or not user.is_active:
        cached = []
    elif user.is_superuser:
        cached = [(org, Role.ADMIN) for org in Organization.objects.order_by("name")]
    else:
        rows = Membership.objects.filter(user_id=user.pk).select_related("org").order_by("org__name")
        cached = [(m.org, Role(m.role)) for m in rows]
    request._org_candidates = cached  # type: ignore[attr-defined]
    return cached


def get_org_for_user(request: HttpRequest, slug: str, role: str = Role.VIEW) -> OrgAccess:
    """The org named by `slug` if the user may act there with `role`: Http404
    for an outsider, PermissionDenied for a member with a lesser role."""
    cached: dict[str, OrgAccess] = getattr(request, "_org_access", {})
    access = cached.get(slug)
    if access is None:
        for org, current in _candidates(request):
            if org_slug(org) == slug:
                access = OrgAccess(org=org, role=current)
                break
        if access is None:
            raise Http404("No such organization.")
        cached[slug] = access
        request._org_access = cached  # type: ignore[attr-defined]
    if not access.can(role):
        raise PermissionDenied(f"This needs the {Role(role).label} role in {access.org.name}.")
    return access


def orgs_of(request: HttpRequest) -> list[OrgAccess]:
    """Every organization the user can open, for the switcher."""
    return [OrgAccess(org=org, role=role) for org, role in _candidates(request)]


View = TypeVar("View", bound=Callable[..., HttpResponseBase])


def org_methods(*methods: str) -> Callable[[View], View]:
    """Like require_http_methods, but the org is checked first: an outsider
    gets 404 whatever the method, so a 405 never confirms that an org exists."""
    allowed = list(methods) + (["HEAD"] if "GET" in methods else [])

    def decorator(view: View) -> View:
        @wraps(view)
        def wrapper(request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponseBase:
            get_org_for_user(request, kwargs["org"], Role.VIEW)
            if request.method not in allowed:
                return HttpResponseNotAllowed(allowed)
            return view(request, *args, **kwargs)

        return wrapper  # type: ignore[return-value]

    return decorator
