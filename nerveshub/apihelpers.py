"""What every app's API router borrows: the access checks every endpoint loads
its objects through, and the acting user. Below the routers (the apps import
it; it imports only tenancy), so nerveshub/api.py can gather the routers
without an import cycle.
"""

from __future__ import annotations

from django.contrib.auth.models import User
from django.http import HttpRequest
from ninja.errors import HttpError

from nerveshub.tenancy import services as tenancy
from nerveshub.tenancy.models import ROLE_RANK, Organization, Product, Role


def require_org(request: HttpRequest, org_name: str, role: str = Role.VIEW) -> Organization:
    """The organization, if the user may see it (else 404) with at least `role`
    (else 403)."""
    org = Organization.objects.filter(name=org_name).first()
    current = tenancy.role_in(request.user, org) if org is not None else None
    if org is None or current is None:
        raise HttpError(404, f"organization {org_name!r} not found")
    if ROLE_RANK[Role(current)] < ROLE_RANK[Role(role)]:
        raise HttpError(403, f"this needs the {role} role in {org_name}")
    return org


def require_product(request: HttpRequest, org_name: str, product_name: str, role: str = Role.VIEW) -> Product:
    org = require_org(request, org_name, role)
    product = Product.objects.select_related("org").filter(org=org, name=product_name).first()
    if product is None:
        raise HttpError(404, f"product {product_name!r} not found in {org_name}")
    return product


def actor(request: HttpRequest) -> User:
    user = request.user
    if not isinstance(user, User):
        raise HttpError(401, "missing or invalid API token")
    return user
